"""``python -m strata``: the ``strata`` command."""

from strata.cli import main

main()
