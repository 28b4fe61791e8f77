"""The systemd service notification protocol, from the daemon's side: one datagram per message to
``$NOTIFY_SOCKET`` (``READY=1``, ``STATUS=...``, ``STOPPING=1``, ``WATCHDOG=1``, ``RELOADING=1``).

Our own ~40 lines rather than a library: the PyPI candidates are unmaintained (``sdnotify``, last
release 2017) or need libsystemd headers and a compiler (``systemd-python``, ``cysystemd``), and the
protocol is a datagram of ``KEY=VALUE`` lines (sd_notify(3), "Notes": an ``AF_UNIX`` ``SOCK_DGRAM``
socket; a path starting with ``@`` is in the abstract namespace).
https://www.freedesktop.org/software/systemd/man/latest/sd_notify.html

Without ``$NOTIFY_SOCKET`` (not started by systemd with ``Type=notify``) every call does nothing.
"""

from __future__ import annotations

import os
import socket
from typing import Mapping

import structlog

log = structlog.get_logger("bridge.systemd")


class Notifier:
    """Sends notifications to the service manager, if there is one; never raises."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self._address = ("\0" + path[1:]) if path.startswith("@") else path
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.watchdog_interval_s = watchdog_interval_s(env)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` lines (``notify(READY=1, STATUS="...")``); False when nobody listens."""
        if self._socket is None:
            return False
        text = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            self._socket.sendto(text.encode(), self._address)
        except OSError as exc:  # the manager went away: the daemon keeps working regardless
            log.warning("systemd.notify_failed", error=str(exc))
            return False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval_s(environ: Mapping[str, str]) -> float | None:
    """How often to send ``WATCHDOG=1``: half of ``$WATCHDOG_USEC`` (as sd_watchdog_enabled(3)
    advises), or None when the watchdog is off or meant for another process (``$WATCHDOG_PID``)."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1e6 / 2
