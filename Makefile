# The one gate: `make test` is what CI runs. It installs what it needs first.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
PYTEST_ARGS ?=
BENCH_ARGS ?=

# toxiproxy for the chaos tests, built from source by the Go toolchain into ./bin.
# The Go proxy's version list stops at v2.5.0, but it serves later tags when asked.
TOXIPROXY_VERSION ?= v2.12.0
TOXIPROXY_MODULE := github.com/Shopify/toxiproxy/v2
TOXIPROXY := bin/toxiproxy-server

.PHONY: test install bench-install toxiproxy lint typecheck imports unit integration e2e chaos proto bench

install:
	$(PIP) install -q -e '.[test]' --config-settings editable_mode=strict

# The benchmarks also need pgqueuer (bench.versus_pgqueuer runs it beside Strata).
bench-install:
	$(PIP) install -q -e '.[test,bench]' --config-settings editable_mode=strict

# Reinstalls when the pin changes. CGO off: a static binary, and no C compiler needed.
# Optimisations off (-N -l): on a cold build cache that cuts the build (mostly the
# standard library) by about a third, and a test proxy moves too few bytes to notice.
toxiproxy:
	@if ! $(TOXIPROXY) -version 2>/dev/null | grep -qxF 'toxiproxy-server version $(TOXIPROXY_VERSION:v%=%)'; then \
		echo "installing toxiproxy-server $(TOXIPROXY_VERSION) into $(TOXIPROXY)"; \
		mkdir -p bin && tmp=$$(mktemp -d bin/.toxiproxy.XXXXXX) && \
		CGO_ENABLED=0 GOBIN=$$PWD/$$tmp go install -gcflags='all=-N -l' \
			-ldflags '-s -w -X $(TOXIPROXY_MODULE).Version=$(TOXIPROXY_VERSION:v%=%)' \
			$(TOXIPROXY_MODULE)/cmd/server@$(TOXIPROXY_VERSION) && \
		mv $$tmp/server $(TOXIPROXY) && rmdir $$tmp; \
	fi

lint:
	ruff check .

typecheck:
	mypy

imports:
	lint-imports

test: install toxiproxy lint typecheck imports
	$(PYTHON) -m pytest $(PYTEST_ARGS)

unit:
	$(PYTHON) -m pytest tests/unit $(PYTEST_ARGS)

integration:
	$(PYTHON) -m pytest tests/integration $(PYTEST_ARGS)

e2e:
	$(PYTHON) -m pytest tests/e2e $(PYTEST_ARGS)

chaos: toxiproxy
	$(PYTHON) -m pytest tests/chaos $(PYTEST_ARGS)

proto:
	$(PYTHON) -m strata.proto.generate

# Every benchmark, one at a time (minutes; BENCH_ARGS=--quick for a smoke run of each).
bench: bench-install toxiproxy
	$(PYTHON) -m bench.run $(BENCH_ARGS)
