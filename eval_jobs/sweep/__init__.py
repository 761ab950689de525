"""Sweeps: many checkpoints of a training run, each deployed as soon as it fits, evaluated, retired; one learning
curve at the end.

    job = load_sweep_config("configs/sweep/demo.yaml")     # cluster:, serve:, eval:, sweep:
    result = run_sweep(job)                                 # eval_jobs.sweep.run; resumable
    out = convert(checkpoint, base, cache_dir)              # eval_jobs.sweep.convert: MindSpore → HF directory

checkpoints (find, watch) → convert (MindSpore, tensor by tensor) → scheduler (pack, deploy, evaluate, retire) →
scores (each checkpoint once, in its own thread) → report (curve).
"""
