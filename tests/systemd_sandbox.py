"""A real systemd (PID 1) in private namespaces over a throw-away overlay of `/`.

What ships is run here exactly as a bench runs it: the unit file under a real
systemd, the installer as root. Nothing reaches the host:

- the sandbox is a new PID, mount, UTS, IPC, network and cgroup namespace
  (`unshare`), in a cgroup of its own under the host's cgroup2 hierarchy;
- its root is an overlayfs whose lower layer is the host's `/` (read-only
  through the overlay) and whose upper layer is a tmpfs that lives only in the
  sandbox's mount namespace, so every file written inside (users, venv,
  config, units, journal) vanishes with it;
- `/run`, `/tmp`, `/var/tmp`, `/dev/shm` and `/var/log/journal` are private
  tmpfs, `/dev` is a minimal tmpfs with the usual character devices, the only
  network is its own loopback;
- systemd boots a target of ours that wants nothing; every unit that the host
  enables (timers, its mosquitto, timesyncd…) and every boot-time unit that
  would act on the kernel rather than on files (sysctl, modules, binfmt,
  mounts) is masked inside, so only journald and what a test starts run.

Tear-down is SIGKILL of the sandbox's PID 1 (the kernel then kills every
process of the namespace), then removal of the cgroup.

Driven with `nsenter -t <pid> -a`: `systemctl` as root reaches systemd over its
private socket; the system bus runs only when a test starts `dbus.socket`.
Needs root, `unshare`, `nsenter`, `/lib/systemd/systemd` and a cgroup2
hierarchy; `unavailable_reason()` says what is missing, for the skip message.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import textwrap
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

SYSTEMD = Path("/lib/systemd/system/../systemd").resolve()  # /lib/systemd/systemd
SANDBOX_TARGET = "bench-sandbox.target"

# Boot-time units allowed to run inside: the journal, which the tests read, and
# the system bus, which a test may start (nothing starts it at the sandbox's boot:
# its target pulls in nothing) for polkit checks made by systemd.
KEEP_UNITS = frozenset(
    {
        "systemd-journald.service",
        "systemd-journald.socket",
        "systemd-journald-dev-log.socket",
        "systemd-journal-flush.service",
        "dbus.socket",
        "dbus.service",
    }
)
UNIT_DIRS = (Path("/lib/systemd/system"), Path("/etc/systemd/system"))


def _cgroup2_root() -> Path | None:
    """Where the host mounts its cgroup2 hierarchy (unified or hybrid layout)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        separator = fields.index("-")
        if fields[separator + 1] == "cgroup2":
            return Path(fields[4])
    return None


def unavailable_reason() -> str | None:
    """Why a sandbox cannot be made on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (namespaces, overlayfs, systemd as PID 1)"
    for tool in ("unshare", "nsenter", "pivot_root"):
        if shutil.which(tool) is None:
            return f"{tool} not found (util-linux)"
    if not SYSTEMD.is_file():
        return f"{SYSTEMD} not found (systemd)"
    if _cgroup2_root() is None:
        return "no cgroup2 hierarchy mounted"
    return None


def units_to_mask() -> list[str]:
    """Every unit a boot would pull in or a timer would start, except the journal's."""
    names: set[str] = set()
    for unit_dir in UNIT_DIRS:
        if not unit_dir.is_dir():
            continue
        for wants in list(unit_dir.glob("*.wants")) + list(unit_dir.glob("*.requires")):
            names.update(link.name for link in wants.iterdir())
        for pattern in ("*.mount", "*.automount", "*.swap", "*.timer", "*.path"):
            names.update(unit.name for unit in unit_dir.glob(pattern))
    # Instances (getty@tty1.service) are masked by their own name; the template stays.
    return sorted(names - KEEP_UNITS)


# Run by `unshare` as PID 1 of the new namespaces; ends by exec'ing systemd.
_INIT_SCRIPT = textwrap.dedent(
    """\
    set -eu
    base=$1; shift
    mount --make-rprivate /
    mount -t tmpfs -o mode=0755 sandbox "$base"
    mkdir "$base/upper" "$base/work" "$base/root"
    mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root"
    root=$base/root
    mount -t proc proc "$root/proc"
    mount -t sysfs sysfs "$root/sys"
    mount -t cgroup2 cgroup2 "$root/sys/fs/cgroup"
    for dir in run tmp var/tmp var/log/journal; do
        mkdir -p "$root/$dir"
        mount -t tmpfs -o mode=0755 tmpfs "$root/$dir"
    done
    chmod 1777 "$root/tmp" "$root/var/tmp"
    mount -t tmpfs -o mode=0755 dev "$root/dev"
    for node in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
        name=${node%%:*}; numbers=${node#*:}
        mknod -m 0666 "$root/dev/$name" c "${numbers%:*}" "${numbers#*:}"
    done
    mkdir "$root/dev/pts" "$root/dev/shm"
    mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$root/dev/pts"
    ln -s pts/ptmx "$root/dev/ptmx"
    mount -t tmpfs -o mode=1777 shm "$root/dev/shm"
    ln -s /proc/self/fd "$root/dev/fd"
    ip link set lo up
    units=$root/etc/systemd/system
    mkdir -p "$units"
    for unit in "$@"; do ln -sfn /dev/null "$units/$unit"; done
    cat >"$units/{target}" <<EOF
    [Unit]
    Description=bench-agent test sandbox: nothing but what the test starts
    DefaultDependencies=no
    EOF
    cd "$root"
    mkdir -p .oldroot
    pivot_root . .oldroot
    umount -l /.oldroot
    rmdir /.oldroot
    export container=bench-sandbox
    exec {systemd} --system --unit={target} --log-target=journal --log-level=notice
    """
)


class SystemdSandbox:
    """One booted sandbox; use as a context manager (`with SystemdSandbox(dir) as box`)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.name = f"bench-sandbox-{uuid.uuid4().hex[:12]}"
        cgroup2 = _cgroup2_root()
        assert cgroup2 is not None, unavailable_reason()
        self.cgroup = cgroup2 / self.name
        self.pid = 0  # the sandbox's PID 1, as the host sees it
        self._unshare: subprocess.Popen[bytes] | None = None
        self.console = workdir / "sandbox-console.log"

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> SystemdSandbox:
        try:
            self.boot()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def boot(self, timeout_s: float = 30.0) -> None:
        base = self.workdir / "sandbox"
        base.mkdir(parents=True, exist_ok=True)
        self.cgroup.mkdir()
        script = _INIT_SCRIPT.replace("{target}", SANDBOX_TARGET).replace("{systemd}", str(SYSTEMD))
        procs = self.cgroup / "cgroup.procs"

        def enter_cgroup() -> None:  # in the child, before unshare makes the cgroup its root
            procs.write_text("0")

        with self.console.open("wb") as console:
            self._unshare = subprocess.Popen(
                [
                    "unshare",
                    "--pid",
                    "--fork",
                    "--kill-child",
                    "--mount",
                    "--uts",
                    "--ipc",
                    "--net",
                    "--cgroup",
                    "sh",
                    "-c",
                    script,
                    "sandbox-init",
                    str(base),
                    *units_to_mask(),
                ],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                preexec_fn=enter_cgroup,  # noqa: PLW1509 - no threads are started by then
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._unshare.poll() is not None:
                raise RuntimeError(f"sandbox did not boot:\n{self.console.read_text()}")
            self.pid = self._find_init()
            if self.pid and self._systemd_answers():
                return
            time.sleep(0.05)
        raise TimeoutError(f"systemd did not answer in {timeout_s} s:\n{self.console.read_text()}")

    def _find_init(self) -> int:
        """The sandbox's PID 1 (unshare's child), once it is systemd."""
        assert self._unshare is not None
        children = Path(f"/proc/{self._unshare.pid}/task/{self._unshare.pid}/children")
        with contextlib.suppress(OSError):
            for pid in children.read_text().split():
                if Path(f"/proc/{pid}/exe").resolve() == SYSTEMD:
                    return int(pid)
        return 0

    def _systemd_answers(self) -> bool:
        probe = self.run(["systemctl", "is-system-running"], check=False, timeout_s=5)
        return probe.stdout.strip() in {"running", "degraded", "starting"}

    def destroy(self) -> None:
        # SIGKILL of the sandbox's PID 1 ends every process in it; `unshare`
        # then reaps it and exits. Killing `unshare` first (or at once) would
        # leave PID 1 a zombie for the host's init to reap.
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self._unshare is not None:
            try:
                self._unshare.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._unshare.kill()  # --kill-child: takes its child with it
                self._unshare.wait(timeout=10)
        self._remove_cgroup()

    def _remove_cgroup(self, timeout_s: float = 10.0) -> None:
        """Remove the sandbox's cgroup tree, deepest first, once its processes are gone."""
        if not self.cgroup.exists():
            return
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                for path in sorted(self.cgroup.rglob("*"), key=lambda p: -len(p.parts)):
                    if path.is_dir():
                        path.rmdir()
                self.cgroup.rmdir()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    # -- inside ------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout_s: float = 60.0,
        input_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside every namespace of the sandbox, as root."""
        completed = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-a", *argv],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            input=input_text,
            check=False,
            env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        if check and completed.returncode != 0:
            raise subprocess.CalledProcessError(
                completed.returncode, argv, completed.stdout, completed.stderr
            )
        return completed

    def sh(self, script: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return self.run(["sh", "-c", script], **kwargs)

    def start(self, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        """A long-running process inside (a broker, a subscriber); its output to `log`."""
        with log.open("wb") as out:
            return subprocess.Popen(
                ["nsenter", "-t", str(self.pid), "-a", *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def path(self, inside: str) -> Path:
        """A path of the sandbox's file system, as the host reaches it."""
        return Path(f"/proc/{self.pid}/root") / inside.lstrip("/")

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", *args], check=check)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        out = self.run(["systemctl", "show", unit, *(f"--property={p}" for p in properties)])
        return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


@contextlib.contextmanager
def sandbox(workdir: Path) -> Iterator[SystemdSandbox]:
    with SystemdSandbox(workdir) as box:
        yield box
