"""Coverage of AISBench's dataset configs: which load, render and score here (`make coverage`).

    from eval_jobs.coverage.check import check_configs, markdown
    results = check_configs("gsm8k*")
    python -m eval_jobs.coverage --output docs/coverage.md      # or: evalcluster datasets --check --output ...
"""
