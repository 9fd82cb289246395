"""The daemon's side of the control socket: one thread, a selector, bounded clients,
requests, time and lines; each request handed to a handler (`control_api`). The
protocol, its errors and the client are in `control.py`."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import shutil
import socket
import stat
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from bench_agent.checks import json_nesting_exceeds
from bench_agent.local.control import (
    IDLE_TIMEOUT_S,
    MAX_CLIENTS,
    MAX_CONNECTION_S,
    MAX_LINE_BYTES,
    MAX_METHOD_CHARS,
    MAX_NESTING,
    PROTOCOL_VERSION,
    RECV_BYTES,
    REQUEST_TIMEOUT_S,
    ControlError,
    ControlSocketError,
    Handler,
    Peer,
    encode,
    error_message,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- server


class _Connection:
    __slots__ = (
        "closing",
        "eof",
        "inbuf",
        "last_active",
        "line_started",
        "outbuf",
        "peer",
        "sock",
        "started",
    )

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.peer = Peer.of(sock)
        self.started = now
        self.line_started: float | None = None  # first byte of a request not yet whole
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.last_active = now
        self.eof = False  # the peer shut down its side: answer what it sent, then close
        self.closing = False  # close once outbuf is flushed


class ControlServer:
    """Serves `handler` on a Unix socket at `path`; ``start()``/``close()``, or ``with``."""

    def __init__(
        self,
        path: Path,
        handler: Handler,
        *,
        group: str | None = None,
        mode: int = 0o660,
        max_clients: int = MAX_CLIENTS,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        max_connection_s: float = MAX_CONNECTION_S,
    ) -> None:
        self.path = Path(path)
        self._handler = handler
        self._group = group
        self._mode = mode
        self._max_clients = max_clients
        self._idle_timeout_s = idle_timeout_s
        self._request_timeout_s = request_timeout_s
        self._max_connection_s = max_connection_s
        self._selector = selectors.DefaultSelector()
        self._connections: dict[int, _Connection] = {}
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None  # wakes the selector on close()
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._closed = False
        self._sockets_closed = False
        self._inode: int | None = None  # of the socket file we made; close() removes only it

    # -- life cycle ---------------------------------------------------------------

    def start(self) -> Self:
        """Bind, set the mode and group, listen and start the server thread.

        Raises ControlSocketError when another live server answers at the path, the
        path is something other than a socket, or the group cannot be set.
        """
        with self._lock:
            if self._closed or self._thread is not None:
                raise RuntimeError("a ControlServer starts once")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_socket(self.path)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                listener.bind(str(self.path))
                self._inode = os.stat(self.path).st_ino
                # Until listen() nobody can connect, so the mode and group are set
                # before any client can reach a socket that is more open than asked.
                os.chmod(self.path, self._mode)
                if self._group is not None:
                    _chgrp(self.path, self._group)
                listener.listen(self._max_clients)
                listener.setblocking(False)
            except BaseException:
                listener.close()
                self._unlink_own_socket()
                raise
            self._listener = listener
            self._selector.register(listener, selectors.EVENT_READ, "listener")
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
            self._thread = threading.Thread(target=self._serve, name="control-socket", daemon=True)
            self._thread.start()
            log.info("control socket listening on %s", self.path)
            return self

    def close(self, join_timeout_s: float = 10.0) -> None:
        """Stop serving, close every connection and remove the socket file. Idempotent.

        Waits for a handler call in progress (up to `join_timeout_s`).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(join_timeout_s)
            if self._thread.is_alive():
                log.warning("control socket: a handler call is still running at close")
        if self._thread is None:
            self._close_sockets()  # never started; otherwise the thread closes them on its way out
        self._unlink_own_socket()

    def __enter__(self) -> Self:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def alive(self) -> bool:
        """The serving thread runs (or was never started, or was closed on purpose)."""
        return self._closed or self._thread is None or self._thread.is_alive()

    @property
    def client_count(self) -> int:
        return len(self._connections)

    def _close_sockets(self) -> None:
        if self._sockets_closed:
            return
        self._sockets_closed = True
        for conn in list(self._connections.values()):
            self._drop(conn)
        if self._listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self._listener)
            self._listener.close()
        self._selector.close()
        for wake in (self._wake_r, self._wake_w):
            if wake is not None:
                wake.close()

    def _unlink_own_socket(self) -> None:
        # Only our own file: a second daemon that replaced it keeps its socket.
        try:
            if self._inode is not None and os.lstat(self.path).st_ino == self._inode:
                self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("control socket: cannot remove %s: %s", self.path, exc)

    # -- the loop -----------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                ready = self._selector.select(self._select_timeout())
                # Connections first: a client that hung up and reconnected at once
                # frees its old slot before the new connection is counted.
                ready.sort(key=lambda event: event[0].data == "listener")
                for key, mask in ready:
                    if key.data == "listener":
                        self._accept()
                    elif key.data == "wake":
                        with contextlib.suppress(OSError):
                            key.fileobj.recv(64)  # type: ignore[union-attr]
                    else:
                        self._on_ready(key.data, mask)
                self._expire_idle()
        except Exception:  # pragma: no cover - a bug here must not take the daemon down
            log.exception("control socket: server loop failed; local control is off")
        finally:
            self._close_sockets()

    def _select_timeout(self) -> float | None:
        if not self._connections:
            return None
        soonest = min(self._expiry(conn)[0] for conn in self._connections.values())
        return max(0.0, soonest - time.monotonic())

    def _expiry(self, conn: _Connection) -> tuple[float, str, str]:
        """When `conn` is closed if nothing changes, with the error code and message."""
        limits = [
            (conn.last_active + self._idle_timeout_s, "idle_timeout", "closed after inactivity"),
            (
                conn.started + self._max_connection_s,
                "connection_timeout",
                f"a connection lives at most {self._max_connection_s:g} s",
            ),
        ]
        if conn.line_started is not None:
            limits.append(
                (
                    conn.line_started + self._request_timeout_s,
                    "request_timeout",
                    f"a request must arrive within {self._request_timeout_s:g} s",
                )
            )
        return min(limits)

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EMFILE and friends: keep serving the others
            log.warning("control socket: accept failed: %s", exc)
            return
        sock.setblocking(False)
        if len(self._connections) >= self._max_clients:
            self._reap_hung_up()
        if len(self._connections) >= self._max_clients:
            with contextlib.suppress(OSError):
                sock.send(
                    encode(error_message(None, "busy", "too many clients")), socket.MSG_NOSIGNAL
                )
            sock.close()
            return
        conn = _Connection(sock, time.monotonic())
        self._connections[sock.fileno()] = conn
        self._selector.register(sock, selectors.EVENT_READ, conn)

    def _reap_hung_up(self) -> None:
        """Drop connections whose client has gone (EOF waiting) and that owe nothing."""
        for conn in list(self._connections.values()):
            if conn.outbuf or conn.inbuf:
                continue
            try:
                gone = conn.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
            except (BlockingIOError, InterruptedError):
                gone = False
            except OSError:
                gone = True
            if gone:
                self._drop(conn)

    def _on_ready(self, conn: _Connection, mask: int) -> None:
        """One connection's turn. Whatever goes wrong in it ends that connection only."""
        try:
            self._serve_connection(conn, mask)
        except Exception:
            log.exception("control socket: dropping a connection after an error")
            with contextlib.suppress(Exception):
                self._drop(conn)

    def _serve_connection(self, conn: _Connection, mask: int) -> None:
        conn.last_active = time.monotonic()
        if mask & selectors.EVENT_READ:
            try:
                data = conn.sock.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                self._drop(conn)
                return
            if data == b"":
                conn.eof = True
            elif data:
                if not conn.inbuf:
                    conn.line_started = conn.last_active
                conn.inbuf += data
        if mask & selectors.EVENT_WRITE and not self._flush(conn):
            return
        self._pump(conn)

    def _pump(self, conn: _Connection) -> None:
        """Answer buffered lines while answers go out at once; then wait for I/O."""
        while not conn.outbuf and not conn.closing:
            line = self._next_line(conn)
            if line is None:
                break
            if line.strip():
                conn.outbuf += self._answer(line, conn.peer)
            if not self._flush(conn):
                return
        if conn.outbuf:
            self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
        elif conn.closing or conn.eof:
            self._drop(conn)
        else:
            self._selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def _next_line(self, conn: _Connection) -> bytes | None:
        newline = conn.inbuf.find(b"\n")
        if newline > MAX_LINE_BYTES or (newline < 0 and len(conn.inbuf) > MAX_LINE_BYTES):
            conn.inbuf.clear()
            conn.outbuf += encode(
                error_message(
                    None, "line_too_long", f"a request line is at most {MAX_LINE_BYTES} bytes"
                )
            )
            conn.closing = True
            return None
        if newline < 0:
            return None
        line = bytes(conn.inbuf[:newline])
        del conn.inbuf[: newline + 1]
        # What is left is the start of the next request: its clock starts now.
        conn.line_started = time.monotonic() if conn.inbuf else None
        return line

    def _flush(self, conn: _Connection) -> bool:
        """Send what the socket takes now. False when the connection was dropped."""
        try:
            sent = conn.sock.send(conn.outbuf, socket.MSG_NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:  # the client went away before reading its answer
            self._drop(conn)
            return False
        del conn.outbuf[:sent]
        return True

    def _expire_idle(self) -> None:
        now = time.monotonic()
        for conn in list(self._connections.values()):
            deadline, code, message = self._expiry(conn)
            if now >= deadline:
                with contextlib.suppress(OSError):
                    conn.sock.send(encode(error_message(None, code, message)), socket.MSG_NOSIGNAL)
                self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        self._connections.pop(conn.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        conn.sock.close()

    # -- one request --------------------------------------------------------------

    def _answer(self, line: bytes, peer: Peer | None) -> bytes:
        try:
            request_id, method, params = _parse_request(line)
        except _BadRequest as exc:
            return encode(error_message(exc.request_id, exc.code, exc.message))
        try:
            result = self._handler(method, params, peer)
            return encode({"v": PROTOCOL_VERSION, "id": request_id, "ok": True, "result": result})
        except ControlError as exc:
            return encode(error_message(request_id, exc.code, exc.message))
        except Exception:
            log.exception("control socket: %s failed", method)
            return encode(error_message(request_id, "internal", f"{method} failed in the daemon"))


class _BadRequest(ControlError):
    def __init__(self, request_id: Any, code: str, message: str) -> None:
        super().__init__(code, message)
        self.request_id = request_id


def _parse_request(line: bytes) -> tuple[int | str, str, dict[str, Any]]:
    """(id, method, params) of a request line; raises _BadRequest."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise _BadRequest(None, "bad_request", "not a JSON line") from None
    # A depth bomb ([[[[…) would raise RecursionError inside json.loads.
    if json_nesting_exceeds(text, MAX_NESTING):
        raise _BadRequest(None, "bad_request", f"nested deeper than {MAX_NESTING} levels")
    try:
        request = json.loads(text)
    except (ValueError, RecursionError):
        raise _BadRequest(None, "bad_request", "not a JSON line") from None
    if not isinstance(request, dict):
        raise _BadRequest(None, "bad_request", "a request is a JSON object")
    request_id = request.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        raise _BadRequest(None, "bad_request", '"id" must be an integer or a string')
    if request.get("v") != PROTOCOL_VERSION:
        message = f"this daemon speaks protocol v{PROTOCOL_VERSION}"
        raise _BadRequest(request_id, "unsupported_version", message)
    method = request.get("method")
    if not isinstance(method, str) or not 0 < len(method) <= MAX_METHOD_CHARS:
        raise _BadRequest(request_id, "bad_request", '"method" must be a short string')
    params = request.get("params", {})
    if not isinstance(params, dict):
        raise _BadRequest(request_id, "bad_request", '"params" must be an object')
    return request_id, method, params


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket file left by a dead daemon; refuse if a live one answers there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlSocketError(f"{path} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        log.info("control socket: removing stale %s", path)
        path.unlink(missing_ok=True)
        return
    except TimeoutError:
        pass  # a live server with a full backlog
    except OSError as exc:
        raise ControlSocketError(f"{path}: cannot check the existing socket: {exc}") from None
    finally:
        probe.close()
    raise ControlSocketError(f"{path}: another bench-agent is already serving there")


def _chgrp(path: Path, group: str) -> None:
    try:
        shutil.chown(path, group=group)
    except LookupError:
        raise ControlSocketError(f"{path}: unknown group {group!r}") from None
    except OSError as exc:
        raise ControlSocketError(f"{path}: cannot set group {group!r}: {exc.strerror}") from None
