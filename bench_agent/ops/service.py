"""What the city's long-running `bench-ops` services (the bridge, the archive) share:
their exit codes and how a signal stops them."""

from __future__ import annotations

import signal
import threading
from types import FrameType

EXIT_OK = 0
EXIT_FAILED = 70  # EX_SOFTWARE: paho's network thread ended
EXIT_REFUSED = 77  # EX_NOPERM: the broker refused a subscription or a publish (its ACL)


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM (systemd's stop) and SIGINT (Ctrl-C) set `stop`: the service's loop ends
    and it shuts down cleanly. From the main thread only (Python's rule for handlers)."""

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
