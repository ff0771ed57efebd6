"""How long what a region holds stays its own.

The master reclaims a region's attempts once it has been silent past the dead-after, so
a region cut off that long must not start what it holds: it would run twice. Every
answer from the master renews the region's lease. An attempt also carries a lease of
its own from its claim (``TaskSpec.lease_expires_at``): a region that was handed an
attempt whose lease has passed, with no heartbeat since to renew it, does not start it.
"""

from __future__ import annotations

import math
import time

from strata.proto import strata_pb2 as pb


class Lease:
    def __init__(self, lease_s: float = math.inf) -> None:
        self.lease_s = lease_s
        self._renewed = time.monotonic()
        # When the newest heartbeat the master answered was taken (monotonic seconds).
        self._beat_taken = -math.inf

    def renew(self, *, beat_taken: float | None = None) -> bool:
        """The master answered; ``beat_taken`` if it was a heartbeat taken then. Returns
        True if the lease had lapsed."""
        lapsed = not self.valid()
        self._renewed = time.monotonic()
        if beat_taken is not None:
            self._beat_taken = max(self._beat_taken, beat_taken)
        return lapsed

    def valid(self) -> bool:
        return time.monotonic() - self._renewed < self.lease_s

    def allows(self, spec: pb.TaskSpec, accepted_at: float) -> bool:
        """Whether an attempt accepted at ``accepted_at`` (monotonic) may start: its own
        lease has not passed, or a heartbeat taken since listed it and was answered."""
        if spec.lease_expires_at <= 0 or self._beat_taken >= accepted_at:
            return True
        return time.time() < spec.lease_expires_at
