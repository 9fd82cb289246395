"""The control socket: a real ControlServer on a Unix socket in tmp_path, real clients."""

from __future__ import annotations

import contextlib
import json
import math
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from bench_agent.errors import BenchAgentError
from bench_agent.local.control import (
    MAX_CLIENTS,
    MAX_LINE_BYTES,
    ControlClient,
    ControlError,
    ControlSocketError,
    DaemonNotResponding,
    DaemonNotRunning,
    Peer,
    PermissionDenied,
)
from bench_agent.local.control_server import ControlServer

REPO = Path(__file__).resolve().parents[1]


def handler(method: str, params: Mapping[str, Any], peer: Peer | None = None) -> Any:
    match method:
        case "echo":
            return {"method": method, "params": dict(params)}
        case "whoami":
            assert peer is not None
            return {"pid": peer.pid, "uid": peer.uid, "gid": peer.gid, "user": peer.user()}
        case "slow":
            time.sleep(float(params.get("s", 0.3)))
            return "slow done"
        case "boom":
            raise ValueError("a bug in the handler")
        case "refuse":
            raise ControlError("bad_params", "output must be usb<N> or wifi")
        case "not_json":
            return object()
        case "nan":
            return math.nan
    raise ControlError("unknown_method", method)


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "control.sock"


@pytest.fixture
def server(sock_path: Path) -> Iterator[ControlServer]:
    with ControlServer(sock_path, handler) as srv:
        yield srv


def raw(path: Path, timeout_s: float = 2.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout_s)
    s.connect(str(path))
    return s


def read_line(s: socket.socket) -> dict[str, Any]:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        assert chunk, f"connection closed; got {buf!r}"
        buf += chunk
    assert buf.count(b"\n") == 1, buf
    message: dict[str, Any] = json.loads(buf)
    return message


def read_lines(s: socket.socket, n: int) -> list[dict[str, Any]]:
    buf = b""
    while buf.count(b"\n") < n:
        chunk = s.recv(65536)
        assert chunk, f"connection closed; got {buf!r}"
        buf += chunk
    return [json.loads(line) for line in buf.splitlines()]


def request(method: str, request_id: int | str = 1, **params: Any) -> bytes:
    line = {"v": 1, "id": request_id, "method": method, "params": params}
    return json.dumps(line).encode() + b"\n"


def is_closed(s: socket.socket) -> bool:
    try:
        return s.recv(65536) == b""
    except ConnectionResetError:
        return True


# --------------------------------------------------------------------------- basics


def test_a_call_goes_to_the_handler_and_back(server: ControlServer, sock_path: Path) -> None:
    client = ControlClient(sock_path)
    assert client.call("echo", {"output": "usb1", "n": 3}) == {
        "method": "echo",
        "params": {"output": "usb1", "n": 3},
    }
    assert client.call("echo") == {"method": "echo", "params": {}}


def test_the_wire_format_is_versioned_and_echoes_the_id(
    server: ControlServer, sock_path: Path
) -> None:
    with raw(sock_path) as s:
        s.sendall(request("echo", "abc", x=1))
        assert read_line(s) == {
            "v": 1,
            "id": "abc",
            "ok": True,
            "result": {"method": "echo", "params": {"x": 1}},
        }
        s.sendall(b'{"v": 1, "id": 9, "method": "echo"}\n')  # params may be left out
        assert read_line(s)["result"] == {"method": "echo", "params": {}}


def test_socket_mode_parent_dir_and_close_removes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "control.sock"
    srv = ControlServer(path, handler)
    assert not path.exists()  # the constructor builds, start() starts
    srv.start()
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    srv.close()
    assert not path.exists()
    srv.close()  # idempotent
    with pytest.raises(RuntimeError):
        srv.start()
    with pytest.raises(DaemonNotRunning):
        ControlClient(path).call("echo")


def test_mode_can_be_narrowed(tmp_path: Path) -> None:
    with ControlServer(tmp_path / "c.sock", handler, mode=0o600) as srv:
        assert stat.S_IMODE(os.stat(srv.path).st_mode) == 0o600


def test_group_is_set_when_given(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("setting another group needs root")
    group = "nogroup"
    try:
        gid = shutil._get_gid(group)  # type: ignore[attr-defined]
    except Exception:
        pytest.skip("no nogroup group here")
    if gid is None:
        pytest.skip("no nogroup group here")
    with ControlServer(tmp_path / "c.sock", handler, group=group) as srv:
        assert os.stat(srv.path).st_gid == gid


def test_an_unknown_group_refuses_to_start_and_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    srv = ControlServer(path, handler, group="no-such-group-here")
    with pytest.raises(ControlSocketError, match="unknown group"):
        srv.start()
    assert not path.exists()
    srv.close()


def test_a_stale_socket_file_is_replaced(sock_path: Path) -> None:
    sock_path.parent.mkdir(parents=True)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_path))  # a daemon killed with -9 leaves exactly this behind
    dead.close()
    assert sock_path.exists()
    with pytest.raises(DaemonNotRunning):
        ControlClient(sock_path).call("echo")
    with ControlServer(sock_path, handler):
        assert ControlClient(sock_path).call("echo")["method"] == "echo"


def test_refuses_to_start_where_a_live_server_answers(
    server: ControlServer, sock_path: Path
) -> None:
    second = ControlServer(sock_path, handler)
    with pytest.raises(ControlSocketError, match="already serving"):
        second.start()
    second.close()
    # The first one is untouched: its file is still there and it still answers.
    assert ControlClient(sock_path).call("echo")["method"] == "echo"


def test_refuses_to_remove_something_that_is_not_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    path.write_text("precious")
    srv = ControlServer(path, handler)
    with pytest.raises(ControlSocketError, match="not a socket"):
        srv.start()
    srv.close()
    assert path.read_text() == "precious"


def test_close_removes_only_its_own_socket(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    srv = ControlServer(path, handler).start()
    path.unlink()  # someone else took the path over meanwhile
    path.write_text("not ours")
    srv.close()
    assert path.read_text() == "not ours"


def test_exceptions_are_bench_agent_errors_and_built_ins() -> None:
    assert issubclass(DaemonNotRunning, BenchAgentError)
    assert issubclass(DaemonNotRunning, ConnectionError)
    assert issubclass(PermissionDenied, PermissionError)
    assert issubclass(DaemonNotResponding, TimeoutError)
    assert issubclass(ControlError, BenchAgentError)
    assert issubclass(ControlSocketError, OSError)
    err = ControlError("bad_params", "no such port")
    assert (err.code, err.message, str(err)) == (
        "bad_params",
        "no such port",
        "bad_params: no such port",
    )


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("line", "code", "request_id"),
    [
        (b"not json at all", "bad_request", None),
        (b"\xff\xfe\x00garbage", "bad_request", None),
        (b"[1, 2, 3]", "bad_request", None),
        (b'"just a string"', "bad_request", None),
        (b'{"v": 1, "method": "echo"}', "bad_request", None),
        (b'{"v": 1, "id": true, "method": "echo"}', "bad_request", None),
        (b'{"v": 1, "id": [1], "method": "echo"}', "bad_request", None),
        (b'{"v": 2, "id": 4, "method": "echo"}', "unsupported_version", 4),
        (b'{"id": 4, "method": "echo"}', "unsupported_version", 4),
        (b'{"v": 1, "id": 5}', "bad_request", 5),
        (b'{"v": 1, "id": 5, "method": ""}', "bad_request", 5),
        (b'{"v": 1, "id": 5, "method": 7}', "bad_request", 5),
        (b'{"v": 1, "id": 5, "method": "' + b"m" * 65 + b'"}', "bad_request", 5),
        (b'{"v": 1, "id": 6, "method": "echo", "params": [1]}', "bad_request", 6),
        (b'{"v": 1, "id": 7, "method": "nope"}', "unknown_method", 7),
    ],
)
def test_a_bad_line_gets_an_error_and_the_connection_goes_on(
    server: ControlServer, sock_path: Path, line: bytes, code: str, request_id: Any
) -> None:
    with raw(sock_path) as s:
        s.sendall(line + b"\n")
        answer = read_line(s)
        assert answer["v"] == 1
        assert answer["ok"] is False
        assert answer["id"] == request_id
        assert answer["error"]["code"] == code
        assert isinstance(answer["error"]["message"], str)
        s.sendall(request("echo", 2))
        assert read_line(s)["result"]["method"] == "echo"


@pytest.mark.parametrize(
    "line",
    [
        b"[" * 30_000,  # RecursionError inside json.loads, past `except ValueError`
        b"[" * 30_000 + b"]" * 30_000,
        b'{"v": 1, "id": 1, "method": "echo", "params": {"a": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
        b'{"v": 1, "id": 1, "method": "echo", "params": {"a": "' + b"[" * 20_000 + b'"}}',
    ],
    ids=["open-brackets", "balanced", "in-params", "brackets-in-a-string"],
)
def test_a_depth_bomb_is_a_bad_request_and_the_server_lives_on(
    server: ControlServer, sock_path: Path, line: bytes
) -> None:
    with raw(sock_path) as s:
        s.sendall(line + b"\n")
        answer = read_line(s)
        if b'"' + b"[" * 100 in line:  # brackets inside a string are just text
            assert answer["ok"] is True
        else:
            assert answer["error"]["code"] == "bad_request"
        s.sendall(request("echo", 2))
        assert read_line(s)["result"]["method"] == "echo"
    assert server.alive()
    with raw(sock_path) as again:  # a new connection too
        again.sendall(request("echo", 3))
        assert read_line(again)["id"] == 3


def test_blank_lines_are_ignored(server: ControlServer, sock_path: Path) -> None:
    with raw(sock_path) as s:
        s.sendall(b"\n  \n" + request("echo", 3))
        assert read_line(s)["id"] == 3


def test_an_oversize_line_is_refused_and_the_connection_closed(
    server: ControlServer, sock_path: Path
) -> None:
    with raw(sock_path) as s:
        s.sendall(b"x" * (MAX_LINE_BYTES + 1))  # no newline yet: refused before it ends
        answer = read_line(s)
        assert answer["error"]["code"] == "line_too_long"
        assert is_closed(s)
    assert ControlClient(sock_path).call("echo")["method"] == "echo"  # others unharmed


def test_a_line_of_exactly_the_limit_is_served(server: ControlServer, sock_path: Path) -> None:
    empty = request("echo", 1, pad="")
    pad = "p" * (MAX_LINE_BYTES - (len(empty) - 1))
    line = request("echo", 1, pad=pad)
    assert len(line) == MAX_LINE_BYTES + 1  # the newline is not counted
    with raw(sock_path) as s:
        s.sendall(line)
        assert read_line(s)["result"]["params"]["pad"] == pad
        s.sendall(request("echo", 2, pad=pad + "p"))
        assert read_line(s)["error"]["code"] == "line_too_long"


def test_handler_exceptions_become_internal_errors(server: ControlServer, sock_path: Path) -> None:
    client = ControlClient(sock_path)
    for method in ("boom", "not_json", "nan"):
        with pytest.raises(ControlError) as caught:
            client.call(method)
        assert caught.value.code == "internal"
    with pytest.raises(ControlError) as refused:
        client.call("refuse")
    assert (refused.value.code, refused.value.message) == (
        "bad_params",
        "output must be usb<N> or wifi",
    )
    assert client.call("echo")["method"] == "echo"  # the server goes on


# --------------------------------------------------------------------------- connections


def test_pipelined_requests_are_answered_in_order(server: ControlServer, sock_path: Path) -> None:
    with raw(sock_path) as s:
        s.sendall(request("echo", 1) + request("refuse", 2) + request("echo", 3))
        answers = read_lines(s, 3)
    assert [a["id"] for a in answers] == [1, 2, 3]
    assert [a["ok"] for a in answers] == [True, False, True]


def test_a_half_closed_connection_still_gets_its_answer(
    server: ControlServer, sock_path: Path
) -> None:
    with raw(sock_path) as s:
        s.sendall(request("echo", 1))
        s.shutdown(socket.SHUT_WR)  # what `echo … | socat - UNIX:…` does
        assert read_line(s)["id"] == 1
        assert is_closed(s)


def test_at_most_max_clients_at_once(server: ControlServer, sock_path: Path) -> None:
    held = []
    try:
        for i in range(MAX_CLIENTS):
            s = raw(sock_path)
            held.append(s)
            s.sendall(request("echo", i))
            assert read_line(s)["id"] == i
        extra = raw(sock_path)
        answer = read_line(extra)
        assert answer["error"]["code"] == "busy"
        assert is_closed(extra)
        extra.close()
        with pytest.raises(ControlError) as caught:
            ControlClient(sock_path).call("echo")
        assert caught.value.code == "busy"
        held.pop().close()
        deadline = time.monotonic() + 2
        while True:  # the server notices the close on its next wake-up
            try:
                assert ControlClient(sock_path).call("echo")["method"] == "echo"
                break
            except ControlError:
                assert time.monotonic() < deadline
                time.sleep(0.01)
        assert server.client_count <= MAX_CLIENTS
    finally:
        for s in held:
            s.close()


def test_many_clients_in_parallel_are_all_answered(server: ControlServer, sock_path: Path) -> None:
    threads_before = threading.active_count()
    errors: list[BaseException] = []

    def work(n: int) -> None:
        client = ControlClient(sock_path)
        try:
            for i in range(50):
                assert client.call("echo", {"n": n, "i": i})["params"] == {"n": n, "i": i}
        except BaseException as exc:  # collected: a thread's assert is otherwise lost
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(MAX_CLIENTS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    assert threading.active_count() == threads_before  # no thread per connection


def test_no_thread_per_connection(server: ControlServer, sock_path: Path) -> None:
    before = threading.active_count()
    held = [raw(sock_path) for _ in range(MAX_CLIENTS)]
    try:
        for i, s in enumerate(held):
            s.sendall(request("echo", i))
            assert read_line(s)["id"] == i
        assert threading.active_count() == before
        assert server.client_count == MAX_CLIENTS
    finally:
        for s in held:
            s.close()


def test_a_blocking_handler_delays_but_does_not_lose_other_clients(
    server: ControlServer, sock_path: Path
) -> None:
    results: dict[str, Any] = {}

    def slow() -> None:
        results["slow"] = ControlClient(sock_path).call("slow", {"s": 0.3})

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.05)
    started = time.monotonic()
    results["fast"] = ControlClient(sock_path).call("echo")
    waited = time.monotonic() - started
    t.join()
    assert results["slow"] == "slow done"
    assert results["fast"]["method"] == "echo"
    assert waited < 2.0


def test_a_client_that_leaves_mid_call_does_not_hurt_the_server(
    server: ControlServer, sock_path: Path
) -> None:
    s = raw(sock_path)
    s.sendall(request("slow", 1, s=0.2))
    s.close()  # gone before its answer is written
    time.sleep(0.3)
    assert ControlClient(sock_path).call("echo")["method"] == "echo"


def test_idle_connections_are_closed(sock_path: Path) -> None:
    with ControlServer(sock_path, handler, idle_timeout_s=0.2) as srv, raw(sock_path) as s:
        s.sendall(request("echo", 1))
        assert read_line(s)["ok"] is True
        started = time.monotonic()
        assert read_line(s)["error"]["code"] == "idle_timeout"
        assert is_closed(s)
        assert 0.1 < time.monotonic() - started < 2.0
        assert srv.client_count == 0


def test_close_disconnects_clients_and_waits_for_the_thread(sock_path: Path) -> None:
    srv = ControlServer(sock_path, handler).start()
    s = raw(sock_path)
    s.sendall(request("echo", 1))
    read_line(s)
    threads = threading.active_count()
    srv.close()
    assert threading.active_count() == threads - 1
    assert is_closed(s)
    s.close()
    assert not sock_path.exists()


# --------------------------------------------------------------------------- client errors


def test_client_without_a_daemon(tmp_path: Path) -> None:
    with pytest.raises(DaemonNotRunning):
        ControlClient(tmp_path / "nothing.sock").call("status")
    with pytest.raises(DaemonNotRunning):
        ControlClient(tmp_path / "no" / "dir" / "c.sock").call("status")


def test_client_times_out_on_a_daemon_that_never_answers(tmp_path: Path) -> None:
    path = tmp_path / "mute.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mute:
        mute.bind(str(path))
        mute.listen(1)  # accepts into the backlog, never reads nor answers
        started = time.monotonic()
        with pytest.raises(DaemonNotResponding):
            ControlClient(path, timeout_s=0.3).call("status")
        assert time.monotonic() - started < 2.0


def test_client_reports_a_daemon_that_hangs_up(tmp_path: Path) -> None:
    path = tmp_path / "rude.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as rude:
        rude.bind(str(path))
        rude.listen(1)

        def hang_up() -> None:
            conn, _ = rude.accept()
            conn.recv(1024)
            conn.sendall(b'{"v": 1, "id"')  # half an answer, then gone
            conn.close()

        t = threading.Thread(target=hang_up)
        t.start()
        with pytest.raises(DaemonNotResponding):
            ControlClient(path, timeout_s=2).call("status")
        t.join()


def test_client_rejects_an_answer_to_another_request(tmp_path: Path) -> None:
    path = tmp_path / "odd.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as odd:
        odd.bind(str(path))
        odd.listen(1)

        def answer_wrong() -> None:
            conn, _ = odd.accept()
            conn.recv(1024)
            conn.sendall(b'{"v": 1, "id": 999, "ok": true, "result": 1}\n')
            conn.close()

        t = threading.Thread(target=answer_wrong)
        t.start()
        with pytest.raises(ControlError) as caught:
            ControlClient(path, timeout_s=2).call("status")
        t.join()
    assert caught.value.code == "bad_response"


@contextlib.contextmanager
def world_readable_tempdir() -> Iterator[Path]:
    # tmp_path's parents are 0700; `nobody` must reach the socket to be refused by IT.
    directory = Path(tempfile.mkdtemp(prefix="ctl-", dir="/tmp"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    with world_readable_tempdir() as directory:
        yield directory


def python_for_nobody() -> str | None:
    """An interpreter (3.11+) that `nobody` may run: the venv's may live under /root."""
    candidates = (
        sys.executable,
        "/usr/bin/python3.11",
        "/usr/local/bin/python3.11",
        "/usr/bin/python3",
    )
    for candidate in candidates:
        if not os.path.exists(candidate):
            continue
        real = Path(os.path.realpath(candidate))
        reachable = all(os.stat(p).st_mode & stat.S_IXOTH for p in [real, *real.parents])
        if reachable:
            done = subprocess.run(
                [str(real), "-c", "import sys; sys.exit(sys.version_info < (3, 11))"],
                check=False,
                timeout=30,
            )
            if done.returncode == 0:
                return str(real)
    return None


def as_nobody(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """Run `python args…` as nobody, importing bench_agent from this checkout."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a root-only socket and run a client as nobody")
    python = python_for_nobody()
    if python is None:
        pytest.skip("no Python 3.11 that nobody may run")
    return subprocess.run(
        [python, *args],
        check=False,
        user="nobody",
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_permission_denied_for_another_user(world_readable_dir: Path) -> None:
    path = world_readable_dir / "c.sock"
    probe = (
        "import sys\n"
        "from bench_agent.local.control import ControlClient, PermissionDenied\n"
        "try:\n"
        f"    ControlClient({str(path)!r}).call('echo')\n"
        "except PermissionDenied:\n"
        "    sys.exit(77)\n"
        "sys.exit(0)\n"
    )
    with ControlServer(path, handler, mode=0o600):
        assert os.stat(path).st_uid == 0
        done = as_nobody(["-c", probe])
    assert done.returncode == 77, done.stderr


def test_start_and_close_leak_no_file_descriptors(tmp_path: Path) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    ControlServer(tmp_path / "warm.sock", handler).start().close()
    before = open_fds()
    for i in range(20):
        with ControlServer(tmp_path / f"{i}.sock", handler) as srv, raw(srv.path) as s:
            s.sendall(request("echo", i))
            read_line(s)
        ControlServer(tmp_path / "never.sock", handler).close()  # built, never started
    assert open_fds() == before


def test_the_handler_learns_the_peers_uid_from_the_kernel(
    server: ControlServer, sock_path: Path
) -> None:
    with raw(sock_path) as s:
        s.sendall(request("whoami"))
        me = read_line(s)["result"]
    assert (me["pid"], me["uid"], me["gid"]) == (os.getpid(), os.getuid(), os.getgid())
    assert me["user"] == f"uid={os.getuid()}({pwd.getpwuid(os.getuid()).pw_name})"


def test_a_uid_without_a_name_is_shown_as_the_number() -> None:
    assert Peer(pid=1, uid=54321, gid=54321).user() == "uid=54321"


def test_clients_trickling_bytes_cannot_hold_every_slot(sock_path: Path) -> None:
    # Before: one byte a second kept each connection "active" for ever; eight of them
    # answered every technician with "busy".
    with ControlServer(sock_path, handler, request_timeout_s=0.5) as srv:
        slow = [raw(sock_path) for _ in range(MAX_CLIENTS)]
        try:
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                for s in slow:
                    with contextlib.suppress(OSError):
                        s.sendall(b"{")
                time.sleep(0.1)
            for s in slow:
                assert read_line(s)["error"]["code"] == "request_timeout"
            assert srv.client_count == 0
            with raw(sock_path) as technician:
                technician.sendall(request("echo", 9))
                assert read_line(technician)["id"] == 9
        finally:
            for s in slow:
                s.close()


def test_a_connection_has_a_bounded_life(sock_path: Path) -> None:
    with ControlServer(sock_path, handler, max_connection_s=0.6) as srv, raw(sock_path) as s:
        deadline = time.monotonic() + 1.5
        answered = 0
        with contextlib.suppress(OSError):
            while time.monotonic() < deadline:
                s.sendall(request("echo", answered))  # busy, never idle
                if read_line(s).get("ok") is not True:
                    break
                answered += 1
                time.sleep(0.05)
        assert answered > 3
        assert srv.client_count == 0
