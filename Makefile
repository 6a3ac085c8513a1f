# The two commands of the README. Both create .venv/ on first use and reuse it afterwards.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
# A local CIFAR-10 copy to prepare from; where there is none, the official archive is downloaded.
CIFAR ?= ../shared/data/cifar10-jpg.tar.gz

.PHONY: demo test clean

$(BIN)/resbench: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev,ray]'
	@touch $@

data/resbench-cifar10.npz: | $(BIN)/resbench
	$(BIN)/resbench data prepare $(if $(wildcard $(CIFAR)),--from $(CIFAR))

demo: $(BIN)/resbench data/resbench-cifar10.npz  ## set up, then run the main job
	$(BIN)/resbench compare plain20 plain56 resnet56 --preset quick

test: $(BIN)/resbench  ## set up, then run the whole test suite and the linter
	$(BIN)/ruff check .
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
