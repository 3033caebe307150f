# The two commands of the README: `make run` (set up, then start the service on
# embedded defaults) and `make test` (set up, then lint, type-check and test).
# Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= $(abspath ../shared)
export BASE_WEIGHTS ?= $(if $(wildcard $(SHARED)/models/xception_imagenet_notop.weights.h5),$(SHARED)/models/xception_imagenet_notop.weights.h5,imagenet)

.PHONY: setup serve-setup run test bench capacity soak cluster-test compose-test lint typecheck pytest clean lock

setup: $(VENV)/.installed

# What serving needs (`.[worker]`: the API, the workers, OpenVINO; no TensorFlow, no
# test tools): all `make run` installs. `make test` installs the rest.
serve-setup: $(VENV)/.installed-serve

$(VENV)/.installed-serve: pyproject.toml
	$(call install,worker)
	touch $@

$(VENV)/.installed: pyproject.toml
	$(call install,dev)
	touch $@ $(VENV)/.installed-serve

# $(call install,EXTRAS): create .venv when missing, then install the project with EXTRAS.
# setuptools warns, on every editable install of a flat layout, about folders named like
# the packages (they are the packages; ../shared is data): not for users' eyes.
define install
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet -e '.[$(1)]'
endef

run: serve-setup
	$(BIN)/intel-classifier serve $(ARGS)

bench: setup
	$(BIN)/python -m bench $(ARGS)

# The capacity simulation (docs/capacity.md): workers needed for a load, in seconds.
capacity: setup
	$(BIN)/python -m bench.capacity $(ARGS)

soak: setup
	$(BIN)/pytest -m soak -s tests/soak $(PYTEST_ARGS)

# The service as separate hosts in network namespaces (root; tests/cluster). `make test`
# runs it too; this runs it alone, with its figures.
cluster-test: setup
	$(BIN)/pytest -s tests/cluster $(PYTEST_ARGS)

# The Dockerfile's images and the compose stack, built and run in a private dockerd (root;
# tests/compose): minutes of downloads and builds, so not part of `make test`.
compose-test: setup
	$(BIN)/pytest -m compose -s tests/compose $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy

pytest: setup
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

# Re-pin constraints.txt (used by the Dockerfile and CI; `make setup` honours
# PIP_CONSTRAINT when it is set): resolve '.[dev]' afresh in a scratch venv.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet -e '.[dev]'
	{ echo "# Pinned versions of every dependency of every role (pip constraints), made by"; \
	  echo "# \`make lock\`: pip freeze of a fresh venv with '.[dev]'. Used by the Dockerfile and CI."; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable | LC_ALL=C sort -f; } > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
