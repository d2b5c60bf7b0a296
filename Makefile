# dllm-align: `make test` sets up .venv and runs the suite; `make demo` runs the main job on the tiny model.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?= -m "not gpu"

.PHONY: venv test lint demo bench clean

$(BIN)/activate:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# CPU torch 2.13.0 unless a GPU is visible: an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q "torch>=2.13"; \
	else $(BIN)/pip install -q torch==2.13.0; fi
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS) tests

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

demo: venv
	@echo "make demo: the embedded tiny-model demo is not built yet (see the embedded-default issue)."; exit 1

clean:
	rm -rf $(VENV) .pytest_cache
