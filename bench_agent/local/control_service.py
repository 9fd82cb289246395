"""The technician's socket, kept served: started with the agent, served again if it ends.

If it cannot be served (another agent holds it, a bad group) the bench goes on
without it: telemetry matters more, and the `control_socket` fault tells ops.
If its thread ends although nobody stopped it, it is served again at once (the
`thread.control_socket` fault while that fails).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

from bench_agent.config import ControlConfig
from bench_agent.faults import Fault, FaultRegistry, thread_fault
from bench_agent.local.control import ControlSocketError, Peer
from bench_agent.local.control_server import ControlServer

log = logging.getLogger(__name__)

# At the stop, a request still waiting for the loop gets "busy" from its own
# timeout; the stop does not wait for it longer than this.
CLOSE_WAIT_S: Final = 1.0

Handler = Callable[[str, Mapping[str, Any], Peer | None], Any]


class ControlSocketService:
    def __init__(self, cfg: ControlConfig, handler: Handler, faults: FaultRegistry) -> None:
        self._cfg = cfg
        self._handler = handler
        self._faults = faults
        self.server: ControlServer | None = None

    def start(self) -> None:
        self.server = self._serve()

    def close(self) -> None:
        """Whichever server runs at the stop (it may have been served again)."""
        if self.server is not None:
            self.server.close(CLOSE_WAIT_S)

    def alive(self) -> bool:
        """False only when a server that was running has ended; then it is served
        again at once, and this says whether that worked."""
        if self.server is None or self.server.alive():
            return True
        return self._restart()

    def _serve(self) -> ControlServer | None:
        server = ControlServer(self._cfg.socket, self._handler, group=self._cfg.group)
        try:
            server.start()
        except (OSError, ControlSocketError) as exc:
            log.error("control socket %s not served: %s", self._cfg.socket, exc)
            self._faults.raise_(Fault.CONTROL_SOCKET, str(exc)[:200])
            return None
        return server

    def _restart(self) -> bool:
        fault = thread_fault("control_socket")
        self._faults.raise_(fault, "ended unexpectedly; restarting it")
        old, self.server = self.server, None
        if old is not None:
            with contextlib.suppress(Exception):
                old.close(0)
        self.server = self._serve()
        if self.server is None:
            return False
        log.warning("control socket restarted")
        self._faults.clear(fault)
        return True
