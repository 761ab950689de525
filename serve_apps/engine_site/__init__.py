"""Modules that run inside an engine's own Python environment (standard library only). The supervisor puts this
directory, and nothing else of the project, on the engine's PYTHONPATH."""
