"""The agent's exception hierarchy, in one place.

Each exception mixes in the built-in it resembles (as gpiozero does), so callers
that only know the built-in still catch it.
"""

from __future__ import annotations

EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h; systemd's RestartPreventExitStatus uses it


class BenchAgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(BenchAgentError, ValueError):
    """A configuration file is unusable. Rendered as ONE line naming file, key and problem."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        super().__init__(f"{file}: {key}: {problem}")
        self.file = file
        self.key = key
        self.problem = problem


class UsageError(BenchAgentError, ValueError):
    """A bad command-line value (or a file named on the command line): printed as one
    line; each tool exits with its own status (`bench-agent` 2, `bench-ops` 64)."""


class SensorError(BenchAgentError, OSError):
    """A sensor did not answer or answered nonsense; the reading is lost, the agent goes on."""


class SensorAbsent(SensorError):
    """A configured sensor is not on the bus at all (found at construction)."""


class StorageError(BenchAgentError, OSError):
    """The on-disk store cannot be written (disk full, read-only) or read."""
