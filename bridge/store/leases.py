"""Who may change a running job: fenced leases, judged on monotonic clocks only.

The design, and why it holds when the wall clock steps:

- **Owner.** Every process start picks a random instance ID (``JobStore.owner``). Claiming writes
  it on the row with the attempt number (``attempts``, bumped by every claim). Every later write of
  the run (``save_stage``, ``finish``, ``retry_later``, ``bury``) is fenced by ``WHERE id = ? AND
  owner = ? AND attempts = ? AND status = 'running'``: once a job was put back and claimed again,
  the earlier run can no longer change it (its write is logged as ``job.fenced_out`` and ignored).
- **No wall-clock expiry.** ``lease_until`` is written for operators (``jobs show``) but nothing
  compares it with the current time. A process knows in memory which jobs it runs; the deadline of
  a run is ``worker.job_timeout_s``, measured by asyncio on the monotonic clock. So a clock step,
  forward or back, neither ends a lease early nor lets anyone re-claim a running job.
- **Peers.** The lock on ``DB.lock`` admits one process per database, so at start-up every
  running job belongs to a process that is gone and is put back (``queue.release_running``). Should
  a job still be running under another owner later (another process got past the lock, e.g. on a
  file system without ``flock``), its owner proves it is alive by bumping the row's ``heartbeat``
  every ``lease_s / 3`` (``queue.renew``). ``LeaseWatch`` below expires a peer's lease only after
  seeing the same (owner, attempt, heartbeat) for ``lease_s`` on *this* process's monotonic clock,
  and the put-back is fenced by that same triple, so a heartbeat that lands in between wins.
- **Own orphans.** A claim whose answer was lost (the writer process died after committing it)
  leaves jobs running under our own ID that no task runs. The next claim carries the IDs we do run
  (``keep``) and puts the others back first (``queue.release_orphans``). A process therefore never
  re-claims a job it is still running: its running jobs are in ``keep`` and not ``queued``.
"""

from __future__ import annotations

import time
from typing import Callable

Lease = tuple[int, str, int, int]  # (job id, owner, attempts, heartbeat)


class LeaseWatch:
    """Tells which peers' leases have not moved for ``lease_s`` seconds of this process's monotonic
    clock. Pure bookkeeping: feed it the running leases of other owners, act on what it returns."""

    def __init__(self, lease_s: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.lease_s = lease_s
        self.monotonic = monotonic
        self._first_seen: dict[Lease, float] = {}

    def expired(self, leases: list[Lease]) -> list[Lease]:
        """The leases among ``leases`` seen unchanged for at least ``lease_s``; forgets the rest."""
        now = self.monotonic()
        seen = {lease: self._first_seen.get(lease, now) for lease in leases}
        self._first_seen = seen
        return [lease for lease, first in seen.items() if now - first >= self.lease_s]
