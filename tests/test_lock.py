"""deploy/requirements.lock: what the installer installs, pinned and hash-checked.

The installer runs for real in tests/test_deploy_install.py (from a wheelhouse of
exactly these files); here: the lock covers what pyproject.toml asks for, every
pin carries hashes, the installer uses them, and a tampered file is refused.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.support import REPO

LOCK = REPO / "deploy" / "requirements.lock"
WHEELHOUSE = REPO / ".cache" / "wheelhouse"
SYSTEM_PIP = REPO / ".cache" / "system-venv" / "bin" / "pip"


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def pinned() -> dict[str, list[str]]:
    """name -> its hashes, from the lock."""
    pins: dict[str, list[str]] = {}
    current = None
    for line in LOCK.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.-]+)==\S+", line):
            current = match.group(1).lower().replace("_", "-")
            pins[current] = []
        elif current and (h := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            pins[current].append(h.group(1))
    return pins


def test_the_lock_pins_every_dependency_of_the_package_and_its_pi_extra() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["pi"]}
    pins = pinned()
    assert wanted <= pins.keys(), f"run `make lock`: {sorted(wanted - pins.keys())} missing"
    assert all(pins.values()), [name for name, hashes in pins.items() if not hashes]


def test_the_installer_installs_from_the_lock_with_hashes() -> None:
    installer = (REPO / "deploy" / "install.sh").read_text()
    assert '--require-hashes -r "$source_dir/deploy/requirements.lock"' in installer
    # The package itself with no dependency of its own: only the lock's reach the venv
    # (from a clean copy of the checkout's package: test_deploy_install.py).
    assert '--no-deps --no-build-isolation "$package_copy"' in installer


@pytest.mark.skipif(not SYSTEM_PIP.exists(), reason="scripts/setup.sh makes .cache/system-venv")
def test_a_tampered_package_is_refused(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    shutil.copytree(WHEELHOUSE, mirror)
    target = next(mirror.glob("paho_mqtt-*.whl"))
    data = bytearray(target.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the archive
    target.write_bytes(bytes(data))
    offline = ["--no-index", "--find-links", str(mirror)]
    locked = ["--require-hashes", "-r", str(LOCK), "-d", str(tmp_path / "out"), "--no-deps"]
    done = subprocess.run(
        [str(SYSTEM_PIP), "download", *offline, *locked],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode != 0
    assert "DO NOT MATCH THE HASHES" in done.stderr, done.stderr[-2000:]
    assert "paho" in done.stderr.lower()
