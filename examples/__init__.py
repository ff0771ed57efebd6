"""Example python-kind handlers. The default topology (``topologies/local.toml``) allows
this package, so ``strata up`` can run them as they are:

    curl -s -XPOST localhost:8080/v1/tasks -d '{"kind": "python",
         "handler": "strata.examples.report:build", "args": {"day": "2030-01-01"}}'

The SDK's examples (``strata.client``), each ``python -m strata.examples.NAME``:
``etl`` (extract -> transform -> load as one DAG), ``fanout`` (one task, N in parallel
after it, one joining them) and ``nightly`` (a cron schedule in a time zone, triggered
once).
"""
