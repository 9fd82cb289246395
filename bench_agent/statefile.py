"""Small JSON state files in `[storage] dir` (daily counters, uplink recovery): read
forgivingly, written atomically (temporary file, then rename), so a crash or a
power cut leaves the old file or the new one, never half of one."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def read_text(path: Path) -> str | None:
    """The file's content, or None when it is missing or unreadable (logged)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("ignoring unreadable state file %s: %s", path, exc)
        return None


def write_json(path: Path, data: Any) -> bool:
    """Replace `path` with `data` as compact JSON; False (logged) when the disk refuses."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not save state file %s: %s", path, exc)
        return False
    return True
