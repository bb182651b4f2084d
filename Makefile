# One set of commands for people and CI. `make test` sets everything up on a fresh machine
# (virtual environment, build, dependencies) and runs every check; `make demo` runs the main job.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SRC := python tests benches

.PHONY: help venv install dev test check lint fmt typecheck rust-test pytest docs wheel wheel-smoke bench demo clean

help:
	@echo "make test    - set up $(VENV), build, run every check (fmt, clippy, cargo test, ruff, mypy, stubtest, pytest, docs)"
	@echo "make demo    - set up $(VENV) and run the offline demo (genept-fast demo)"
	@echo "make dev     - rebuild the extension in place after a Rust change (maturin develop --release)"
	@echo "make docs    - build the API reference and the guide into site/ (mkdocs --strict)"
	@echo "make bench   - kernel benchmark (release build)"
	@echo "make wheel-smoke - build the abi3 wheel, install it in a fresh venv with no Rust on PATH, smoke-test it"

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

venv: $(PY)

# Editable install: maturin builds the Rust extension (release profile) into python/genept_fast.
# The test extra pulls the eval, dask and annotate extras (everything the tests exercise).
install: $(PY)
	@echo "installing genept-fast in $(VENV) (editable, building the Rust extension) with the test extra (scanpy, scikit-learn, dask, faiss-cpu, tiledbsoma, mkdocs, pytest, ...) — several minutes on first run"
	$(PIP) install -q -e ".[test]"

dev: $(PY)
	$(PIP) install -q "maturin>=1.9,<2"
	$(VENV)/bin/maturin develop --release

test: install check

check: lint typecheck rust-test pytest docs

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(VENV)/bin/ruff check $(SRC)
	$(VENV)/bin/ruff format --check $(SRC)

fmt:
	cargo fmt --all
	$(VENV)/bin/ruff format $(SRC)
	$(VENV)/bin/ruff check --fix $(SRC)

typecheck:
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest genept_fast._core

rust-test:
	cargo test --workspace --exclude genept-py

pytest:
	$(PY) -m pytest -q

# The API reference from the docstrings, and the guide (docs/): every warning is an error.
docs:
	$(VENV)/bin/mkdocs build --strict

wheel: $(PY)
	$(PIP) install -q "maturin>=1.9,<2"
	rm -rf dist
	$(VENV)/bin/maturin build --release --out dist

# Install the wheel (the core alone, no extras) where no compiler or Rust toolchain is reachable,
# and run the core path on it: kernels, gene identity, the local model, GenePT-w/-s, streaming.
wheel-smoke: wheel
	rm -rf .wheel-venv
	python3 -m venv .wheel-venv
	.wheel-venv/bin/pip install -q dist/*.whl
	cd /tmp && env -i PATH=/usr/bin:/bin HOME=$$HOME $(CURDIR)/.wheel-venv/bin/python $(CURDIR)/tests/smoke_wheel.py
	rm -rf .wheel-venv

bench:
	$(PY) benches/bench_kernels.py

# --overwrite: a second `make demo` replaces the demo's own files in genept-demo/ (nothing else).
# The demo extra is the core plus evaluation and plots (scanpy, scikit-learn, matplotlib, igraph).
demo: $(PY)
	@echo "installing genept-fast in $(VENV) (building the Rust extension) with the demo extra (scanpy, scikit-learn, matplotlib, igraph, ...) — about 3 minutes on first run"
	$(PIP) install -q ".[demo]"
	$(VENV)/bin/genept-fast demo --overwrite

clean:
	rm -rf target dist site .wheel-venv python/genept_fast/*.so
