# mlcycle: `make demo` installs everything and runs the loop; `make test` installs and runs the tests.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# uv from PATH, or bootstrapped from PyPI into the current Python (`python3 -m uv`).
UV ?= $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
# Nothing downloads at run time: not a Python build (use the machine's 3.11), not telemetry.
export UV_PYTHON_DOWNLOADS := never
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export BENTOML_DO_NOT_TRACK := True
# The environment is installed with compiled bytecode (--compile-bytecode); clearing this lets the
# project's own modules and tests cache theirs too, instead of recompiling in every process.
unexport PYTHONDONTWRITEBYTECODE

STAMP := .venv/.mlcycle-installed

.PHONY: help install demo test lint bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || { \
		echo "uv not found: installing it from PyPI"; \
		python3 -m pip install --quiet uv || python3 -m pip install --quiet --user --break-system-packages uv; }
	$(UV) sync --frozen --extra dev --compile-bytecode
	@touch $@

install: $(STAMP) ## create .venv from uv.lock (bytecode compiled once)

demo: install ## run the lifecycle end to end on embedded defaults (SQLite, local files)
	$(UV) run --no-sync mlcycle demo

test: install ## run the test suite
	$(UV) run --no-sync pytest

lint: install ## ruff check + format check
	$(UV) run --no-sync ruff check src tests flows services feature_repo bench
	$(UV) run --no-sync ruff format --check src tests flows services feature_repo bench

bench: install ## run every benchmark in bench/
	@for b in bench/*.py; do echo "== $$b"; $(UV) run --no-sync python $$b || exit 1; done

clean: ## remove generated state (data/), keep the environment
	rm -rf data
