"""A counting TCP proxy: what a client and a server send each other, per connection.

`ByteProxy(target_port)` listens on a free loopback port and forwards every
connection to the target, counting the TCP payload bytes each way (`up`: client
to server, `down`: server to client) and, from the kernel's TCP_INFO of the
client-facing socket, the TCP segments each way (SYN, FIN and bare ACKs
included), so that headers can be added for small exchanges where they dominate.
`cut()` closes every open connection (the client sees its link drop and
reconnects); `freeze()` lets nothing more through either way while the sockets
stay open (a bench that lost power, as the broker sees it: silence, no FIN; what
either side sends is read and dropped, so a side that closes is still seen);
`refuse()` cuts every connection and closes new ones at once (the server is away for
the client) until `admit()`; `close()` also stops listening.

Standard library only; used by bench/bench_link_cost.py, tests/test_link_cost.py and
tests/test_archive.py.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, replace

# Per TCP segment on the wire: IPv4 (20) + TCP (20) + the timestamp option Linux uses
# (12). IPv6 adds 20; a cellular carrier's own tunnelling is not billed to the bench.
HEADER_BYTES = 52
# struct tcp_info (linux/tcp.h): tcpi_segs_out, tcpi_segs_in are two u32 at offset 136.
_TCP_INFO_SEGS = struct.Struct("=II")
_TCP_INFO_SEGS_AT = 136


@dataclass(frozen=True)
class Flow:
    """One connection through the proxy, as counted so far."""

    number: int  # 1 for the first connection the proxy accepted
    opened: float  # time.monotonic()
    up: int = 0  # payload bytes client -> server
    down: int = 0  # payload bytes server -> client
    segments_up: int = 0  # TCP segments client -> proxy (0 where TCP_INFO is missing)
    segments_down: int = 0
    last_up: float = 0.0  # time.monotonic() of the last bytes client -> server
    server_ended: float | None = None  # when the server closed its side (or it failed)
    closed: float | None = None

    @property
    def total(self) -> int:
        return self.up + self.down

    @property
    def wire(self) -> int:
        """Both ways with IPv4 and TCP headers: what a metered link bills."""
        return self.total + HEADER_BYTES * (self.segments_up + self.segments_down)

    def minus(self, earlier: Flow) -> Flow:
        """What moved on this connection since `earlier` (a snapshot of it)."""
        return replace(
            self,
            up=self.up - earlier.up,
            down=self.down - earlier.down,
            segments_up=self.segments_up - earlier.segments_up,
            segments_down=self.segments_down - earlier.segments_down,
        )


def _segments(sock: socket.socket) -> tuple[int, int] | None:
    """(segments the peer sent us, segments we sent it), or None."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except (OSError, AttributeError):
        return None
    if len(info) < _TCP_INFO_SEGS_AT + _TCP_INFO_SEGS.size:
        return None
    segs_out, segs_in = _TCP_INFO_SEGS.unpack_from(info, _TCP_INFO_SEGS_AT)
    return segs_in, segs_out


class _Connection:
    def __init__(self, number: int, client: socket.socket, upstream: socket.socket) -> None:
        self.lock = threading.Lock()
        self.flow = Flow(number, time.monotonic())
        self.client = client
        self.upstream = upstream
        self.last_activity = self.flow.opened
        self.ends = 0  # forwarding threads that finished

    def count(self, up: int, down: int) -> None:
        with self.lock:
            self.last_activity = time.monotonic()
            self.flow = replace(
                self.flow,
                up=self.flow.up + up,
                down=self.flow.down + down,
                last_up=self.last_activity if up else self.flow.last_up,
            )

    def snapshot(self) -> Flow:
        """The flow, with the kernel's segment counts read now (while the socket is open)."""
        with self.lock:
            if self.flow.closed is None and (segs := _segments(self.client)) is not None:
                self.flow = replace(self.flow, segments_up=segs[0], segments_down=segs[1])
            return self.flow

    def close(self) -> None:
        self.snapshot()  # the last segment counts, before the socket goes
        with self.lock:
            if self.flow.closed is None:
                self.flow = replace(self.flow, closed=time.monotonic())
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class ByteProxy:
    """Forwards 127.0.0.1:`port` to `target_host`:`target_port`, counting each connection."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # so that close() is seen
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._connections: list[_Connection] = []
        self._closing = threading.Event()
        self._frozen = threading.Event()
        self._refusing = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="byte-proxy", daemon=True)
        self._thread.start()

    def __enter__(self) -> ByteProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what was counted ---------------------------------------------------

    def flows(self) -> list[Flow]:
        """Every connection so far, oldest first."""
        with self._lock:
            connections = list(self._connections)
        return [c.snapshot() for c in connections]

    def last(self) -> Flow:
        flows = self.flows()
        if not flows:
            raise AssertionError("no connection came through the proxy")
        return flows[-1]

    def wait_for_flows(self, count: int, timeout_s: float = 10.0) -> list[Flow]:
        deadline = time.monotonic() + timeout_s
        while len(flows := self.flows()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(flows)} connections through the proxy, not {count}")
            time.sleep(0.01)
        return flows

    def wait_quiet(self, quiet_s: float = 0.3, timeout_s: float = 10.0) -> list[Flow]:
        """Wait until no byte moved on any connection for `quiet_s`; then `flows()`."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                newest = max((c.last_activity for c in self._connections), default=0.0)
            now = time.monotonic()
            if now - newest >= quiet_s:
                return self.flows()
            if now > deadline:
                raise AssertionError(f"the proxy's connections never went quiet for {quiet_s} s")
            time.sleep(min(0.02, quiet_s / 4))

    # -- control --------------------------------------------------------------

    def cut(self) -> None:
        """Close every open connection (new ones are still accepted): forces a reconnect."""
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.close()

    def freeze(self) -> None:
        """From now on nothing passes, either way; the connections stay open."""
        self._frozen.set()

    def refuse(self) -> None:
        """Cut every connection and close new ones at once, until `admit()`."""
        self._refusing.set()
        self.cut()

    def admit(self) -> None:
        self._refusing.clear()

    def close(self) -> None:
        self._closing.set()
        self._thread.join(5)
        self._listener.close()
        self.cut()

    # -- the forwarding threads ---------------------------------------------

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            if self._refusing.is_set():
                client.close()
                continue
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):  # what a client sends goes out at once
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                connection = _Connection(len(self._connections) + 1, client, upstream)
                self._connections.append(connection)
            for up in (True, False):
                threading.Thread(
                    target=self._forward, args=(connection, up), name="byte-proxy", daemon=True
                ).start()

    def _forward(self, connection: _Connection, up: bool) -> None:
        src, dst = (
            (connection.client, connection.upstream)
            if up
            else (connection.upstream, connection.client)
        )
        try:
            while data := src.recv(65536):
                if self._frozen.is_set():
                    continue  # dropped: the other side hears nothing
                dst.sendall(data)
                connection.count(len(data) if up else 0, 0 if up else len(data))
        except OSError:
            pass
        finally:
            with connection.lock:
                connection.ends += 1
                both_done = connection.ends == 2
                if not up:
                    connection.flow = replace(connection.flow, server_ended=time.monotonic())
            if both_done:
                connection.close()
            elif not self._frozen.is_set():  # pass the end on: the other side sees EOF
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
