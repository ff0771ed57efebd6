"""Strata: a hierarchical, multi-region task scheduler.

Every part lives under this one import name: ``strata.master``, ``strata.regional``,
``strata.worker`` (the three tiers), ``strata.common`` and ``strata.proto`` (what they
share), ``strata.topologies``, ``strata.local`` (``strata up``: supervisor, embedded
PostgreSQL, process launcher) and ``strata.deploy`` (the compose renderer). This
package itself holds the ``strata`` command (``strata.cli``).
"""

from __future__ import annotations

__version__ = "0.1.0"
