"""The small state files: read forgivingly, replaced atomically, so that a crash, a power
cut or a full SD card leaves the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench_agent import statefile
from bench_agent.statefile import read_text, replace_atomically, write_json
from tests.support import small_tmpfs

OLD = {"day": "2026-12-04", "energy_wh": 412.5, "sessions": 9}


def saved(path: Path, data: object = OLD) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# -- reading -------------------------------------------------------------------------


def test_a_missing_file_is_none_and_not_worth_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="bench_agent.statefile"):
        assert read_text(tmp_path / "daily-counters.json") is None
    assert caplog.records == []


def test_an_unreadable_file_is_none_and_a_warning_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "controller.json"
    path.mkdir()  # IsADirectoryError: an OSError that is not "missing"
    with caplog.at_level(logging.WARNING, logger="bench_agent.statefile"):
        assert read_text(path) is None
    assert len(caplog.records) == 1
    assert str(path) in caplog.records[0].getMessage()


def test_garbage_bytes_come_back_as_text_for_the_caller_to_refuse(tmp_path: Path) -> None:
    path = tmp_path / "uplink.json"
    path.write_bytes(b'{"t": \xff\xfe\x00 1}')  # not UTF-8: a sector of garbage
    text = read_text(path)
    assert text == '{"t": \ufffd\ufffd\x00 1}'
    with pytest.raises(ValueError):  # what every caller catches
        json.loads(text)


def test_a_truncated_file_reads_as_it_is(tmp_path: Path) -> None:
    path = saved(tmp_path / "counters.json")
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    text = read_text(path)
    assert text is not None and whole.decode().startswith(text) and text != whole.decode()
    with pytest.raises(ValueError):
        json.loads(text)


# -- writing -------------------------------------------------------------------------


def test_write_json_replaces_the_file_with_compact_json_and_no_leftover(tmp_path: Path) -> None:
    path = saved(tmp_path / "counters.json")
    new = {"day": "2026-12-05", "energy_wh": 0.0, "ports": {"usb1": [1, 2]}}
    assert write_json(path, new)
    assert path.read_bytes() == b'{"day":"2026-12-05","energy_wh":0.0,"ports":{"usb1":[1,2]}}'
    assert read_text(path) is not None and json.loads(path.read_text()) == new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counters.json"]


def test_a_new_file_is_private_unless_asked_otherwise(tmp_path: Path) -> None:
    replace_atomically(tmp_path / "replay.jsonl", b"x\n", durable=False)
    assert stat.S_IMODE((tmp_path / "replay.jsonl").stat().st_mode) == 0o600
    umask = os.umask(0o022)
    try:
        replace_atomically(tmp_path / "seq-floor", b"41\n", durable=True, mode=0o644)
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "seq-floor").stat().st_mode) == 0o644


def test_a_crash_mid_write_leaves_the_old_file_whole(tmp_path: Path) -> None:
    """A real process, killed by SIGKILL after writing half of the new content."""
    path = saved(tmp_path / "counters.json")
    old = path.read_bytes()
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from bench_agent import statefile

        real_write = os.write

        def write_half_then_die(fd, data):
            real_write(fd, bytes(data)[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)

        statefile.os.write = write_half_then_die
        statefile.write_json(Path({str(path)!r}), {{"energy_wh": 1.0, "pad": "x" * 4000}})
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=60, check=False
    )
    assert done.returncode == -9, done.stderr
    assert path.read_bytes() == old
    tmp = tmp_path / "counters.json.tmp"
    assert 0 < tmp.stat().st_size < 4000  # the half-written new file, never renamed
    # The next save is not stopped by the leftover: it is truncated and reused.
    assert write_json(path, {"energy_wh": 2.0})
    assert json.loads(path.read_text()) == {"energy_wh": 2.0}
    assert not tmp.exists()


def test_a_refused_write_is_false_and_a_warning_and_the_old_file_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = saved(tmp_path / "counters.json")
    old = path.read_bytes()
    (tmp_path / "counters.json.tmp").mkdir()  # the temporary file cannot be opened
    with caplog.at_level(logging.WARNING, logger="bench_agent.statefile"):
        assert write_json(path, {"energy_wh": 1.0}) is False
    assert path.read_bytes() == old
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert str(path) in caplog.records[0].getMessage()
    with pytest.raises(OSError):  # replace_atomically itself raises, for who must know
        replace_atomically(path, b"{}", durable=True)
    assert path.read_bytes() == old


def test_a_missing_directory_is_false_not_a_crash(tmp_path: Path) -> None:
    assert write_json(tmp_path / "gone" / "counters.json", OLD) is False
    assert not (tmp_path / "gone").exists()


def test_data_that_is_not_json_raises_before_the_file_is_touched(tmp_path: Path) -> None:
    """A programming error, not a disk problem: it is not swallowed as one."""
    path = saved(tmp_path / "counters.json")
    old = path.read_bytes()
    with pytest.raises(TypeError):
        write_json(path, {"when": object()})
    assert path.read_bytes() == old
    assert not (tmp_path / "counters.json.tmp").exists()


def fill_all_but_one_page(mnt: Path) -> None:
    ballast = mnt / "ballast"
    with contextlib.suppress(OSError), ballast.open("wb", buffering=0) as f:
        while True:
            f.write(b"x" * 4096)
    os.truncate(ballast, ballast.stat().st_size - 4096)


def test_a_full_disk_leaves_the_old_file_whole_not_the_part_that_fit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real 64 KiB tmpfs with one page free: write() stores what fits and returns a
    short count (no error), then ENOSPC. Renaming the part that fit would replace a
    good file with half of one."""
    with small_tmpfs(tmp_path / "small", "64k") as mnt:
        path = mnt / "counters.json"
        old = b'{"energy_wh":412.5}'
        path.write_bytes(old)
        fill_all_but_one_page(mnt)
        big = {"pad": "y" * 20_000}
        with caplog.at_level(logging.WARNING, logger="bench_agent.statefile"):
            assert write_json(path, big) is False
        assert path.read_bytes() == old
        assert "could not save" in caplog.text
        with pytest.raises(OSError):
            replace_atomically(path, b"z" * 20_000, durable=True)
        assert path.read_bytes() == old
        (mnt / "ballast").unlink()  # space again: the next save goes through whole
        assert write_json(path, big)
        assert json.loads(path.read_text()) == big


# -- durability ----------------------------------------------------------------------


@pytest.fixture
def journal(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """What replace_atomically asks of the kernel, in order: the real fsync and rename,
    each recorded (by inode) on the way through. A power cut cannot be staged here."""
    calls: list[tuple[str, int]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        calls.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(statefile.os, "fsync", fsync)
    monkeypatch.setattr(statefile.os, "replace", replace)
    return calls


def test_durable_syncs_the_file_before_the_rename_and_the_directory_after(
    tmp_path: Path, journal: list[tuple[str, int]]
) -> None:
    path = tmp_path / "seq-floor"
    replace_atomically(path, b"1234\n", durable=True)
    assert path.read_bytes() == b"1234\n"
    file_ino, dir_ino = path.stat().st_ino, tmp_path.stat().st_ino
    assert journal == [("fsync", file_ino), ("replace", file_ino), ("fsync", dir_ino)]


def test_not_durable_leaves_the_write_back_to_the_kernel(
    tmp_path: Path, journal: list[tuple[str, int]]
) -> None:
    path = tmp_path / "counters.json"
    assert write_json(path, OLD)
    assert journal == [("replace", path.stat().st_ino)]
