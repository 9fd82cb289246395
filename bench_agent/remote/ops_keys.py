"""Ops' public keys, as the agent loads them at start and on reload.

A bad key file is skipped (commands signed with it are refused) and named in
the `ops_keys` fault: one flawed key pushed to a fleet must not stop every
bench (a config error exits 78, which is never restarted).
"""

from __future__ import annotations

import logging
from pathlib import Path

from nacl.signing import VerifyKey

from bench_agent.remote.signing import load_trusted_keys

log = logging.getLogger(__name__)


def load_ops_keys(directory: Path) -> tuple[dict[str, VerifyKey], str | None]:
    """({key id: key}, the bad files for the fault or None). OSError when the
    directory exists but cannot be read; a missing directory is no keys."""
    bad: list[str] = []
    keys = (
        load_trusted_keys(directory, on_bad_key=lambda e: bad.append(str(e)))
        if directory.is_dir()
        else {}
    )
    for problem in bad:
        log.error("ops key skipped: %s", problem)
    if not keys:
        log.warning("no trusted ops keys in %s: signed commands will be refused", directory)
    return dict(keys), "; ".join(bad)[:500] or None
