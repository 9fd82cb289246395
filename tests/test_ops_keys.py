"""Ops' keys as the agent loads them: a bad file is skipped and named, never fatal."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench_agent.remote.ops_keys import load_ops_keys
from bench_agent.remote.signing import public_key_text


def test_good_keys_load_and_a_bad_file_is_named_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = Ed25519PrivateKey.generate().public_key()
    (tmp_path / "ops-alice.pub").write_text(public_key_text(key) + "\n")
    (tmp_path / "ops-broken.pub").write_text("not a key\n")
    with caplog.at_level(logging.ERROR):
        keys, problems = load_ops_keys(tmp_path)
    assert list(keys) == ["ops-alice"]
    assert problems is not None and "ops-broken.pub" in problems
    assert "ops key skipped" in caplog.text


def test_no_directory_is_no_keys_and_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys, problems = load_ops_keys(tmp_path / "missing")
    assert (keys, problems) == ({}, None)
    assert "signed commands will be refused" in caplog.text
