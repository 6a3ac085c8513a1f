# The two commands of the README. Both create .venv/ on first use and reuse it afterwards.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: demo test lint clean

$(BIN)/resbench: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

demo: $(BIN)/resbench  ## set up, then run the main job
	$(BIN)/resbench show resnet56

test: $(BIN)/resbench  ## set up, then run the whole test suite and the linter
	$(BIN)/ruff check .
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
