# Two entry points, both self-contained on a fresh machine (see README):
#   make run   — set up .venv and launch the app on the embedded demo model
#   make test  — set up .venv and run the whole test suite
# and, for developers: make test-fast (the suite less the tests marked slow), make lint (ruff),
# make bundle (the one-folder application in dist/knn-explorer/, packaging/knn-explorer.spec).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: run test test-fast lint bundle setup clean

setup: $(VENV)/.installed

# torch goes first and pinned: it is the CPU build on this machine kind; letting the resolver pick
# `torch` would download a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[test,cluster]'
	touch $@

run: setup
	$(BIN)/knn-explorer gui

test: setup
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q

test-fast: setup
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .

# PyInstaller comes with the `bundle` extra; the bundle holds this venv's torch (the CPU build).
bundle: setup
	$(BIN)/pip install --quiet -e '.[test,bundle]'
	$(BIN)/pyinstaller --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller packaging/knn-explorer.spec
	@du -sh dist/knn-explorer

clean:
	rm -rf $(VENV)
