"""A real PostgreSQL server for the archive's tests: initdb and pg_ctl (the Debian
`postgresql` package, installed by scripts/setup.sh) in a temporary directory, on a
free loopback port, as an unprivileged user when the tests run as root (the server
refuses root). One server per test session (tests/conftest.py `postgres_server`),
one fresh database per test (`new_database`), so the suite stays fast."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg

from tests.support import free_port, wait_until


def bindir() -> Path:
    """Where initdb and pg_ctl are: `pg_config --bindir`, else the newest
    /usr/lib/postgresql/*/bin."""
    found = shutil.which("pg_config")
    if found:
        done = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False)
        candidate = Path(done.stdout.strip())
        if done.returncode == 0 and (candidate / "pg_ctl").exists():
            return candidate
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True
    )
    for candidate in versions:
        if (candidate / "pg_ctl").exists():
            return candidate
    raise RuntimeError("PostgreSQL is not installed (scripts/setup.sh installs `postgresql`)")


def _reachable_by_others(path: Path) -> bool:
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in [path, *path.parents])


class PostgresServer:
    """initdb + pg_ctl start in `workdir` (or a private directory the server's user can
    reach); `stop()` stops it and removes its files."""

    def __init__(self, workdir: Path, *, durable: bool = False) -> None:
        """`durable`: fsync and synchronous commits as in production (for benchmarks);
        off by default: a test server's data lives for one session."""
        self.durable = durable
        self.bin = bindir()
        self.port = free_port()
        self.user: str | None = None  # run as this user (we are root), else as ourselves
        if os.geteuid() == 0:
            self.user = "postgres" if _user_exists("postgres") else "nobody"
            if not _reachable_by_others(workdir):
                # tmp_path's parents are 0700 (pytest-of-root): the server's user could not
                # reach its data there. A private directory of our own instead, removed in stop().
                workdir = Path(tempfile.mkdtemp(prefix="bench-ops-pg-"))
                workdir.chmod(0o755)
                self._own_dir: Path | None = workdir
            else:
                self._own_dir = None
        else:
            self._own_dir = None
        self.root = workdir / "pg"
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.root.mkdir(mode=0o700)
        if self.user is not None:
            shutil.chown(self.root, self.user, self.user)

    def _run(self, argv: list[str]) -> None:
        command = argv if self.user is None else ["runuser", "-u", self.user, "--", *argv]
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(argv)}: {done.stdout}{done.stderr}{log}")

    def start(self) -> PostgresServer:
        self._run(
            [
                str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync",
            ]
        )  # fmt: skip
        # Loopback only, no Unix socket (tmp paths outgrow its 107-byte limit).
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
            " -c max_connections=200"
        )
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            [str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
             "-o", options, "-w", "-t", "60", "start"]
        )  # fmt: skip
        wait_until(self._answers, 30, f"PostgreSQL on port {self.port}")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _answers(self) -> bool:
        try:
            psycopg.connect(self.url(), connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
        return self.url(name)

    def stop(self) -> None:
        if self.data.exists():
            with contextlib.suppress(RuntimeError):  # not running
                self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                           "-w", "stop"])  # fmt: skip
        shutil.rmtree(self._own_dir or self.root, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
