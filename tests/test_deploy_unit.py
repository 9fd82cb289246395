"""The systemd unit: hardening score, validity, key directives, and the agent's
Python stack running under the restrictions that can be applied without
systemd as PID 1 (no-new-privs, no capabilities, an unprivileged user, umask
0077 and the kernel's memory-deny-write-execute).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "deploy" / "bench-agent.service"
MAX_EXPOSURE = 1.5
INSTALLED_EXEC = "/opt/bench-agent/venv/bin/bench-agent"

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def directives(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> values, in order (systemd allows repeated keys)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


def exposure(unit: Path) -> float:
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=True,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", r.stdout)
    assert m, r.stdout[-500:]
    return float(m.group(1))


@needs_analyze
def test_security_exposure_is_at_most_1_5() -> None:
    # systemd-analyze rounds the weighted sum UP to one decimal, so "1.5" means <= 1.5.
    assert exposure(UNIT) <= MAX_EXPOSURE


@needs_analyze
def test_exposure_check_detects_a_weakened_unit(tmp_path: Path) -> None:
    # Proves the parser reads the real figure: dropping hardening must raise it.
    weak = tmp_path / "bench-agent.service"
    text = UNIT.read_text()
    for key in (
        "ProtectSystem=strict",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=",
    ):
        text = text.replace(f"\n{key}\n", "\n")
    weak.write_text(text)
    assert exposure(weak) > MAX_EXPOSURE


@needs_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    # verify checks that ExecStart's binary exists; here the venv is not
    # installed, so the file as shipped must fail for that reason and no other.
    r = subprocess.run(
        ["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, check=False
    )
    complaints = [line for line in r.stderr.splitlines() if line.strip()]
    if not Path(INSTALLED_EXEC).exists():
        missing = f"Command {INSTALLED_EXEC} is not executable: No such file or directory"
        assert complaints == [f"bench-agent.service: {missing}"]
    else:
        assert r.returncode == 0, r.stderr

    # The same unit, with only the binary swapped for one that exists, is clean.
    copy = tmp_path / "bench-agent.service"
    copy.write_text(
        UNIT.read_text().replace(f"ExecStart={INSTALLED_EXEC}", f"ExecStart={sys.executable}")
    )
    r = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, check=False
    )
    assert (r.returncode, r.stderr.strip()) == (0, "")


@needs_analyze
def test_verify_rejects_a_broken_unit(tmp_path: Path) -> None:
    copy = tmp_path / "bench-agent.service"
    copy.write_text(
        UNIT.read_text()
        .replace(f"ExecStart={INSTALLED_EXEC}", f"ExecStart={sys.executable}")
        .replace("Type=notify", "Type=notifyy")
    )
    r = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, check=False
    )
    assert "notifyy" in r.stderr


def test_key_directives() -> None:
    d = directives(UNIT.read_text())
    unit, service = d["Unit"], d["Service"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["WatchdogSec"] == ["30s"]
    assert service["ExecStart"] == [f"{INSTALLED_EXEC} run -c /etc/bench-agent/bench-agent.toml"]
    # Restart for ever, never on a config error, never stuck in start-limit-hit.
    assert service["Restart"] == ["always"]
    assert service["RestartPreventExitStatus"] == ["78"]
    assert unit["StartLimitIntervalSec"] == ["0"]
    assert "StartLimitIntervalSec" not in service  # would be ignored there
    assert service["User"] == ["bench-agent"]
    assert service["SupplementaryGroups"] == ["gpio i2c dialout"]
    assert service["DevicePolicy"] == ["closed"]
    # i2c-1, the first eight USB serial ports (the charger's cable, whatever its
    # number), the GPIO chips.
    assert sorted(service["DeviceAllow"]) == sorted(
        ["/dev/char/89:1 rw", "char-gpiochip rw"] + [f"/dev/char/188:{n} rw" for n in range(8)]
    )
    assert service["WorkingDirectory"] == ["/run/bench-agent"]
    assert service["RuntimeDirectoryMode"] == ["0750"]
    assert service["UMask"] == ["0077"]
    assert service["CapabilityBoundingSet"] == [""]
    assert service["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    for key in ("NoNewPrivileges", "MemoryDenyWriteExecute", "ProtectHome", "PrivateTmp"):
        assert service[key] == ["yes"], key
    # gpiozero and Blinka read /proc/cpuinfo and /proc/device-tree.
    assert "ProcSubset" not in service


def unexplained_directives(text: str) -> list[str]:
    """Directives not under a comment: each one, or tight group of them, must say why."""
    lines = text.splitlines()
    unexplained = []
    for i, line in enumerate(lines):
        if not re.match(r"[A-Za-z]+=", line):
            continue
        j = i - 1
        while j >= 0 and re.match(r"[A-Za-z]+=", lines[j]):
            j -= 1
        if j < 0 or not lines[j].startswith("#"):
            unexplained.append(line)
    # Self-describing boilerplate needs no comment.
    boilerplate = ("Description=", "Documentation=", "WantedBy=")
    return [x for x in unexplained if not x.startswith(boilerplate)]


def test_every_directive_is_explained() -> None:
    assert unexplained_directives(UNIT.read_text()) == []
    assert unexplained_directives("[Service]\nType=simple\n") == ["Type=simple"]


def _kernel_has_mdwe() -> bool:
    major, minor = (int(x) for x in re.findall(r"\d+", platform.release())[:2])
    return (major, minor) >= (6, 3)


# Run inside the restricted process: everything the agent loads, plus proof
# that the restriction is really in force (a W+X mapping is refused).
PROBE = textwrap.dedent(
    """
    import ctypes, json, mmap, os, sqlite3, ssl, sys, tempfile
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        wx = "allowed"
    except OSError:
        wx = "refused"
    # ctypes callbacks are the classic W+X user (libffi closures).
    cb = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x * 2)
    from cryptography.hazmat.primitives.asymmetric import ec
    ec.generate_private_key(ec.SECP256R1())
    ctx = ssl.create_default_context()
    db = sqlite3.connect(":memory:")
    db.execute("create table t (x)"); db.execute("insert into t values (1)")
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    mqtt.Client(CallbackAPIVersion.VERSION2)
    from gpiozero import OutputDevice
    from gpiozero.pins.mock import MockFactory
    OutputDevice(17, pin_factory=MockFactory()).on()
    import adafruit_ina219, serial
    from systemd import daemon
    daemon.notify("READY=1")  # no NOTIFY_SOCKET here: a no-op, but the C module runs
    import bench_agent
    with open(os.path.join(sys.argv[1], "probe"), "w") as f:
        pass
    mode = os.stat(os.path.join(sys.argv[1], "probe")).st_mode & 0o777
    status = open("/proc/self/status").read()
    print(json.dumps({
        "wx": wx, "callback": cb(21), "mode": oct(mode), "uid": os.getuid(),
        "nnp": [l.split()[1] for l in status.splitlines() if l.startswith("NoNewPrivs")][0],
        "capbnd": [l.split()[1] for l in status.splitlines() if l.startswith("CapBnd")][0],
        "capeff": [l.split()[1] for l in status.splitlines() if l.startswith("CapEff")][0],
    }))
    """
)

# Sets the kernel's MDWE flag (inherited across fork and execve), then execs
# its arguments.
MDWE_LAUNCHER = textwrap.dedent(
    """
    import ctypes, os, sys
    PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        sys.exit("prctl(PR_SET_MDWE) failed: errno %d" % ctypes.get_errno())
    os.execv(sys.argv[1], sys.argv[1:])
    """
)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")
@pytest.mark.skipif(not _kernel_has_mdwe(), reason="PR_SET_MDWE needs Linux >= 6.3")
def test_python_stack_runs_under_unit_restrictions() -> None:
    import json
    import tempfile

    # Scripts go as -c arguments and the work directory under /tmp, because
    # pytest's own tmp directories are 0700 and the probe runs as nobody.
    # The MDWE launcher runs first (it needs ctypes, and the interpreter must
    # be reachable: here it lives under /root), then execs setpriv, which drops
    # to the unit's restrictions and execs the probe: the flag survives both
    # execs, so the probe's whole interpreter start-up runs under it.
    setpriv = shutil.which("setpriv")
    assert setpriv is not None
    cmd = [sys.executable, "-c", MDWE_LAUNCHER, setpriv, "--no-new-privs"]
    cmd += ["--bounding-set=-all", "--inh-caps=-all"]
    as_root = os.geteuid() == 0
    if as_root:
        # The unit's User= is an unprivileged account; nobody stands in for it.
        cmd += ["--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    cmd += [sys.executable, "-c", PROBE]
    env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/nonexistent"}

    def run(umask: int) -> dict[str, object]:
        with tempfile.TemporaryDirectory(prefix="bench-agent-probe-") as workdir:
            os.chmod(workdir, 0o777)  # noqa: S103 - the unprivileged probe writes here
            r = subprocess.run(
                [*cmd, workdir],
                capture_output=True,
                text=True,
                env=env,
                check=False,
                timeout=60,
                preexec_fn=lambda: os.umask(umask),
            )
        assert r.returncode == 0, r.stderr[-2000:]
        return dict(json.loads(r.stdout.strip().splitlines()[-1]))

    result = run(0o077)
    assert result["wx"] == "refused"  # MDWE really was in force
    assert result["callback"] == 42
    assert result["nnp"] == "1"
    assert int(str(result["capbnd"]), 16) == 0
    assert int(str(result["capeff"]), 16) == 0
    assert result["mode"] == "0o600"  # UMask=0077
    if as_root:
        assert result["uid"] != 0


# -- bench-hotspot@.service: the only way the agent can switch the hotspot -----------

HOTSPOT_UNIT = UNIT.parent / "bench-hotspot@.service"
HOTSPOT_EXEC = (
    "/opt/bench-agent/venv/bin/python -I -m bench_agent.hardware.hotspot_switch"
    " %i /etc/bench-agent/bench-agent.toml"
)
MAX_HOTSPOT_EXPOSURE = 1.0  # root, so User= costs 0.4; everything else is closed


def hotspot_instance(tmp_path: Path, python: str | None = None) -> Path:
    """`bench-hotspot@up.service` as systemd instantiates it (analyze takes no templates)."""
    text = HOTSPOT_UNIT.read_text()
    if python is not None:
        text = text.replace("ExecStart=/opt/bench-agent/venv/bin/python", f"ExecStart={python}")
    instance = tmp_path / "bench-hotspot@up.service"
    instance.write_text(text)
    return instance


@needs_analyze
def test_hotspot_unit_exposure_and_verify(tmp_path: Path) -> None:
    assert exposure(hotspot_instance(tmp_path)) <= MAX_HOTSPOT_EXPOSURE
    r = subprocess.run(
        ["systemd-analyze", "verify", str(hotspot_instance(tmp_path, sys.executable))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (r.returncode, r.stderr.strip()) == (0, "")


def test_hotspot_unit_key_directives() -> None:
    d = directives(HOTSPOT_UNIT.read_text())
    service = d["Service"]
    assert service["Type"] == ["oneshot"]  # `systemctl start` returns when nmcli has
    assert service["ExecStart"] == [HOTSPOT_EXEC]
    assert "User" not in service and "DynamicUser" not in service  # root: no polkit for nmcli
    assert service["CapabilityBoundingSet"] == [""]
    assert service["RestrictAddressFamilies"] == ["AF_UNIX"]  # D-Bus only
    assert "Install" not in d  # started by the agent only, never at boot
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateNetwork", "PrivateDevices"):
        assert service[key] == ["yes"], key
    assert service["ProtectSystem"] == ["strict"]


def test_every_hotspot_unit_directive_is_explained() -> None:
    assert unexplained_directives(HOTSPOT_UNIT.read_text()) == []
