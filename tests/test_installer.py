"""deploy/install.sh and deploy/uninstall.sh, run for real into a scratch root.

--root writes every file under the scratch root and records the system
commands (useradd, chown, systemctl, raspi-config...) in a log instead of
running them; --no-venv skips the minutes-long venv build. So this checks the
files, modes, recorded owners, idempotence and the never-overwrite rule, not
that useradd or pip work (those are Debian's and pip's).
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "deploy" / "install.sh"
UNINSTALL = REPO / "deploy" / "uninstall.sh"
LOG = "var/log/bench-agent-install.log"
CONFIG = '[bench]\nid = "bench-test"\n'


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A minimal checkout: install.sh only reads config/ and README.md from it."""
    src = tmp_path / "src"
    (src / "config").mkdir(parents=True)
    (src / "config" / "bench-agent.toml").write_text(CONFIG)
    (src / "README.md").write_text("# bench-agent\n")
    return src


def run(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(script), *args], capture_output=True, text=True, check=False, timeout=30
    )


def install(root: Path, source: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    r = run(INSTALL, "--root", str(root), "--source", str(source), "--no-venv", *extra)
    assert r.returncode == 0, r.stderr
    return r


def snapshot(root: Path) -> dict[str, tuple[str, int, int, str]]:
    """path -> (kind, mode, mtime_ns, content) of everything except the per-run log."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if rel == LOG:
            continue
        st = p.lstat()
        kind = "d" if p.is_dir() else "f"
        content = p.read_text() if kind == "f" else ""
        out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_mtime_ns, content)
    return out


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_install_writes_every_file_with_its_mode(tmp_path: Path, source: Path) -> None:
    root = tmp_path / "root"
    install(root, source)

    assert mode(root / "etc/bench-agent") == 0o750
    assert mode(root / "etc/bench-agent/bench-agent.toml") == 0o640
    assert (root / "etc/bench-agent/bench-agent.toml").read_text() == CONFIG
    assert mode(root / "etc/bench-agent/secrets") == 0o700
    assert mode(root / "var/lib/bench-agent") == 0o750
    unit = root / "etc/systemd/system/bench-agent.service"
    assert mode(unit) == 0o644
    assert unit.read_bytes() == (REPO / "deploy/bench-agent.service").read_bytes()
    hotspot_unit = root / "etc/systemd/system/bench-hotspot@.service"
    assert mode(hotspot_unit) == 0o644
    assert hotspot_unit.read_bytes() == (REPO / "deploy/bench-hotspot@.service").read_bytes()
    rule = root / "etc/polkit-1/rules.d/50-bench-agent-hotspot.rules"
    assert mode(rule) == 0o644
    assert rule.read_bytes() == (REPO / "deploy/polkit/50-bench-agent-hotspot.rules").read_bytes()
    assert (root / "opt/bench-agent/README.md").read_text() == "# bench-agent\n"
    assert not (root / "opt/bench-agent/venv").exists()  # --no-venv


def test_install_records_owners_and_system_commands(tmp_path: Path, source: Path) -> None:
    root = tmp_path / "root"
    host_unit = Path("/etc/systemd/system/bench-agent.service")
    host_had_unit = host_unit.exists()
    install(root, source)
    log = (root / LOG).read_text().splitlines()

    for expected in (
        "chown root:bench-agent /etc/bench-agent",
        "chown root:bench-agent /etc/bench-agent/bench-agent.toml",
        "chown -R bench-agent:bench-agent /etc/bench-agent/secrets",
        "chown bench-agent:bench-agent /var/lib/bench-agent",
        "chown root:root /etc/systemd/system/bench-agent.service "
        "/etc/systemd/system/bench-hotspot@.service "
        "/etc/polkit-1/rules.d/50-bench-agent-hotspot.rules",
        "usermod --append --groups gpio,i2c,dialout bench-agent",
        "raspi-config nonint do_i2c 0",
        "systemctl daemon-reload",
        "systemctl enable --now bench-agent.service",
    ):
        assert expected in log, expected
    assert any("useradd --system" in line and line.endswith(" bench-agent") for line in log)
    for group in ("gpio", "i2c", "dialout"):
        assert f"getent group {group} >/dev/null || groupadd --system {group}" in log
    # The unit is installed before systemd is told about it.
    assert log.index("systemctl daemon-reload") < log.index(
        "systemctl enable --now bench-agent.service"
    )
    # Nothing was written to the real system.
    assert host_unit.exists() == host_had_unit


def test_second_run_changes_nothing(tmp_path: Path, source: Path) -> None:
    root = tmp_path / "root"
    install(root, source)
    first_log = (root / LOG).read_text()
    before = snapshot(root)

    second = install(root, source)
    assert snapshot(root) == before  # same files, modes, contents, and mtimes
    assert "keeping existing /etc/bench-agent/bench-agent.toml" in second.stdout
    # Only the first run had something new to restart the agent for.
    second_log = (root / LOG).read_text()
    assert "systemctl try-restart bench-agent.service" in first_log
    assert "try-restart" not in second_log
    assert second_log == first_log.replace("systemctl try-restart bench-agent.service\n", "")


def test_existing_config_and_secrets_are_never_overwritten(tmp_path: Path, source: Path) -> None:
    root = tmp_path / "root"
    etc = root / "etc/bench-agent"
    (etc / "secrets").mkdir(parents=True)
    (etc / "bench-agent.toml").write_text('[bench]\nid = "taman-kota-3"\n')
    (etc / "bench-agent.toml").chmod(0o644)
    (etc / "secrets/taman-kota-3.key").write_text("KEY")
    (etc / "secrets/taman-kota-3.key").chmod(0o644)

    install(root, source)

    assert (etc / "bench-agent.toml").read_text() == '[bench]\nid = "taman-kota-3"\n'
    assert (etc / "secrets/taman-kota-3.key").read_text() == "KEY"
    # ...but their permissions are tightened.
    assert mode(etc / "bench-agent.toml") == 0o640
    assert mode(etc / "secrets/taman-kota-3.key") == 0o600


def test_changed_unit_is_updated_and_restarts(tmp_path: Path, source: Path) -> None:
    root = tmp_path / "root"
    install(root, source)
    unit = root / "etc/systemd/system/bench-agent.service"
    unit.write_text("[Service]\nExecStart=/bin/false\n")  # an old or hand-edited unit
    install(root, source)
    assert unit.read_bytes() == (REPO / "deploy/bench-agent.service").read_bytes()
    assert "systemctl try-restart bench-agent.service" in (root / LOG).read_text()


def test_bad_arguments_and_missing_config_fail(tmp_path: Path, source: Path) -> None:
    r = run(INSTALL, "--root", str(tmp_path / "root"), "--frobnicate")
    assert r.returncode != 0
    assert "unknown argument: --frobnicate" in r.stderr
    (source / "config" / "bench-agent.toml").unlink()
    r = run(INSTALL, "--root", str(tmp_path / "root"), "--source", str(source), "--no-venv")
    assert r.returncode != 0
    assert "config/bench-agent.toml not found" in r.stderr


def test_uninstall_keeps_config_and_state_unless_purged(tmp_path: Path, source: Path) -> None:
    root = tmp_path / "root"
    install(root, source)
    (root / "var/lib/bench-agent/store.sqlite3").write_text("rows")
    (root / "opt/bench-agent/venv/bin").mkdir(parents=True)  # as a real install would have

    r = run(UNINSTALL, "--root", str(root))
    assert r.returncode == 0, r.stderr
    assert not (root / "etc/systemd/system/bench-agent.service").exists()
    assert not (root / "etc/systemd/system/bench-hotspot@.service").exists()
    assert not (root / "etc/polkit-1/rules.d/50-bench-agent-hotspot.rules").exists()
    assert not (root / "opt/bench-agent").exists()
    assert (root / "etc/bench-agent/bench-agent.toml").read_text() == CONFIG
    assert (root / "var/lib/bench-agent/store.sqlite3").read_text() == "rows"
    ulog = (root / "var/log/bench-agent-uninstall.log").read_text().splitlines()
    assert ulog[0].startswith("systemctl disable --now bench-agent.service")
    assert not any("userdel" in line for line in ulog)

    # Idempotent, and a reinstall keeps the bench's data and identity.
    assert run(UNINSTALL, "--root", str(root)).returncode == 0
    install(root, source)
    assert (root / "var/lib/bench-agent/store.sqlite3").read_text() == "rows"

    r = run(UNINSTALL, "--root", str(root), "--purge")
    assert r.returncode == 0, r.stderr
    assert not (root / "etc/bench-agent").exists()
    assert not (root / "var/lib/bench-agent").exists()
    ulog = (root / "var/log/bench-agent-uninstall.log").read_text()
    assert "userdel bench-agent" in ulog


def test_upgrade_removes_the_old_rule_that_let_the_agent_switch_any_profile(
    tmp_path: Path, source: Path
) -> None:
    root = tmp_path / "root"
    install(root, source)
    old_rule = root / "etc/polkit-1/rules.d/50-bench-agent-nmcli.rules"
    old_rule.write_text('polkit.addRule(function () { return "yes"; });\n')  # an earlier release
    r = install(root, source)
    assert not old_rule.exists()
    assert "removed /etc/polkit-1/rules.d/50-bench-agent-nmcli.rules" in r.stdout
    assert "systemctl try-restart bench-agent.service" in (root / LOG).read_text()
    r = run(UNINSTALL, "--root", str(root))
    assert r.returncode == 0, r.stderr
    assert list((root / "etc/polkit-1/rules.d").iterdir()) == []


@pytest.mark.skipif(
    shutil.which("node") is None, reason="node is needed to evaluate the polkit rule"
)
def test_polkit_rule_grants_only_starting_the_two_hotspot_switches() -> None:
    """Evaluates the rule file as polkit does: a JavaScript function per request.

    The real polkitd, with the real systemd asking it, is in test_deploy_hotspot.py.
    """
    rule = (REPO / "deploy/polkit/50-bench-agent-hotspot.rules").read_text()
    harness = (
        "const rules = [];\n"
        "const polkit = {addRule: (f) => rules.push(f), "
        "Result: {YES: 'yes', NO: 'no', NOT_HANDLED: null}};\n"
        + rule
        + "\nconst cases = JSON.parse(process.argv[1]);\n"
        "console.log(JSON.stringify(cases.map(([user, id, details]) => "
        "rules[0]({id: id, lookup: (k) => details[k]}, {user: user}))));\n"
    )
    units = "org.freedesktop.systemd1.manage-units"
    nm = "org.freedesktop.NetworkManager."
    up, down = "bench-hotspot@up.service", "bench-hotspot@down.service"
    cases = [
        ["bench-agent", units, {"unit": up, "verb": "start"}],
        ["bench-agent", units, {"unit": down, "verb": "start"}],
        ["bench-agent", units, {"unit": up, "verb": "stop"}],
        ["bench-agent", units, {"unit": down, "verb": "restart"}],
        ["bench-agent", units, {"unit": "bench-hotspot@uplink.service", "verb": "start"}],
        ["bench-agent", units, {"unit": "NetworkManager.service", "verb": "stop"}],
        ["bench-agent", units, {"unit": "bench-agent.service", "verb": "stop"}],
        ["bench-agent", units, {}],  # daemon-reload and friends: no unit
        ["bench-agent", nm + "network-control", {}],
        ["bench-agent", nm + "wifi.share.open", {}],
        ["bench-agent", "org.freedesktop.login1.reboot", {}],
        ["pi", units, {"unit": up, "verb": "start"}],
    ]
    r = subprocess.run(
        ["node", "-e", harness, json.dumps(cases)], capture_output=True, text=True, check=True
    )
    assert json.loads(r.stdout) == ["yes", "yes"] + [None] * 10
