# The two commands of the README: `make demo` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ghostreview-installed

.PHONY: install demo test lint bench plots-page clean-demo

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
	$(BIN)/ruff check ghostreview stages tests benchmarks tools
	$(BIN)/mypy

bench: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m benchmarks.run

# The offline page of `dvc plots show/diff` (.dvc/plots/offline.html), after upgrading vl-convert-python.
plots-page: install
	$(BIN)/python -m tools.dvc_plots_page

# Before a real review in the demo's workspace: the demo's kit, every stage output and dvc.lock (not params.yaml),
# and `dvc plots`' page. The .gitignore files DVC wrote inside the removed folders go with them (they name the demo's
# models; `dvc repro` writes the review's); data/.gitignore and reports/.gitignore stay: they name outputs every
# review has (data/refstats, data/standardized, the report's files; `reports/*` skips dot files), and a clone needs
# them committed.
clean-demo:
	rm -rf demo/kit data/images data/embeddings data/scores data/refstats data/standardized reports/* dvc.lock dvc_plots
