# The two commands a new user runs: `make demo` and `make test` (`make demo-ct`: the CT version).
# Both create .venv when it is missing and (re)install only when pyproject.toml changed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS := decoders,faiss,assets,viewer,dev
DEMO_OUT ?= runs/demo
DEMO_CT_OUT ?= runs/demo-ct

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export MPLBACKEND := Agg

.PHONY: demo demo-ct test lint viewer install clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/medvl demo --out $(DEMO_OUT)

# The same steps on synthetic chest CT volumes with a 3D image tower (configs/demo_ct.yaml).
demo-ct: $(STAMP)
	$(BIN)/medvl demo --ct --out $(DEMO_CT_OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# ruff (defects, imports, pyupgrade) over the repository, mypy over medvl/; settings in pyproject.toml
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

viewer: $(STAMP)
	@test -d $(DEMO_OUT)/index || { echo "no index at $(DEMO_OUT)/index: run 'make demo' first"; exit 2; }
	$(BIN)/medvl viewer --index $(DEMO_OUT)/index

bench: $(STAMP)
	@for b in benchmarks/*/bench_*.py benchmarks/recipes/prepare_speed.py; do \
		echo "== $$b"; OMP_NUM_THREADS=2 $(BIN)/python $$b || exit 1; done

# Only what make itself created: the user's runs/ (trained models, indexes) stay.
clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
