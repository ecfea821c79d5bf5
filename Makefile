# The README's two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A GPU user overrides this with the CUDA build, e.g. TORCH_INSTALL="torch==2.13.0 --index-url <cuda index>".
TORCH_INSTALL ?= torch==2.13.0
DEMO_DIR ?= demo_output

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: anything later that depends on torch then finds it satisfied.
	$(PY) -m pip install --quiet $(TORCH_INSTALL)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

demo: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/run_demo.sh $(DEMO_DIR)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/bench_preprocess.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
