"""Example python-kind handlers. The default topology (``topologies/local.toml``) allows
this package, so ``strata up`` can run them as they are:

    curl -s -XPOST localhost:8080/v1/tasks -d '{"kind": "python",
         "handler": "strata.examples.report:build", "args": {"day": "2030-01-01"}}'
"""
