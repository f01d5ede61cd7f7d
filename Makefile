# The two commands of the README: `make demo` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ghostreview-installed

.PHONY: install demo test lint bench clean-demo

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Build the offline demo kit (tiny random-weight models) and run the whole review with DVC.
demo: install
	PATH=$(CURDIR)/$(BIN):$$PATH ghostreview kit demo/kit
	PATH=$(CURDIR)/$(BIN):$$PATH dvc repro
	PATH=$(CURDIR)/$(BIN):$$PATH ghostreview leaderboard

test: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q

# ruff (pyproject's [tool.ruff]) and mypy ([tool.mypy]: ghostreview/ and stages/); CI runs it before the tests.
lint: install
	$(BIN)/ruff check ghostreview stages tests benchmarks
	$(BIN)/mypy

bench: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m benchmarks.run

# Before a real review in the demo's workspace: the demo's kit, every stage output and dvc.lock (not params.yaml).
clean-demo:
	rm -rf demo/kit data/images data/embeddings data/scores data/refstats data/standardized reports/* dvc.lock
