# The one gate: `make test` is what CI runs. It installs what it needs first.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
PYTEST_ARGS ?=

.PHONY: test install lint typecheck imports unit integration e2e proto bench

install:
	$(PIP) install -q -e '.[test]'

lint:
	ruff check .

typecheck:
	mypy

imports:
	lint-imports

test: install lint typecheck imports
	$(PYTHON) -m pytest $(PYTEST_ARGS)

unit:
	$(PYTHON) -m pytest tests/unit $(PYTEST_ARGS)

integration:
	$(PYTHON) -m pytest tests/integration $(PYTEST_ARGS)

e2e:
	$(PYTHON) -m pytest tests/e2e $(PYTEST_ARGS)

proto:
	$(PYTHON) -m proto.generate

bench:
	$(PYTHON) -m bench.run
