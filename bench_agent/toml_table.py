"""A strict reader over one TOML table: typed keys, finite numbers in range, and
every key nobody asked for refused, each problem one `ConfigError` line."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from bench_agent.checks import is_finite_number
from bench_agent.errors import ConfigError

# ---------------------------------------------------------------------------
# A strict reader over one TOML table
# ---------------------------------------------------------------------------


REQUIRED: Any = object()  # sentinel: the key has no default


class TomlTable:
    """Reads typed keys from one TOML table; `done()` rejects keys nobody asked for."""

    def __init__(self, file: str, path: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise ConfigError(file, path or "<top>", "must be a table")
        self.file = file
        self.prefix = path
        self._data: dict[str, Any] = data
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.file, self.key(name), problem)

    def _get(self, name: str, kind: type | tuple[type, ...], kind_name: str, default: Any) -> Any:
        self._seen.add(name)
        if name not in self._data:
            if default is REQUIRED:
                raise self.error(name, "missing")
            return default
        value = self._data[name]
        # bool is an int in Python; a TOML `true` must not pass for a number.
        if isinstance(value, bool) and kind is not bool:
            raise self.error(name, f"must be {kind_name}, not a boolean")
        if not isinstance(value, kind):
            raise self.error(name, f"must be {kind_name}, not {toml_type(value)}")
        return value

    def get_str(self, name: str, default: Any = None) -> Any:
        return self._get(name, str, "a string", default)

    def get_bool(self, name: str, default: Any = REQUIRED) -> bool:
        return cast(bool, self._get(name, bool, "true or false", default))

    def get_int(
        self, name: str, default: Any = REQUIRED, lo: int | None = None, hi: int | None = None
    ) -> Any:
        value = self._get(name, int, "an integer", default)
        if value is not None:
            self._range(name, value, lo, hi)
        return value

    def get_float(
        self, name: str, default: Any = REQUIRED, lo: float | None = None, hi: float | None = None
    ) -> Any:
        value = self._get(name, (int, float), "a number", default)
        if value is not None:
            if is_finite_number(value):  # else _range refuses it (nan, inf, 10**400)
                value = float(value)
            self._range(name, value, lo, hi)
        return value

    def get_path(self, name: str, default: Any = None, base: Path | None = None) -> Path | None:
        value = self.get_str(name, default)
        if value is None:
            return None
        p = Path(value)
        if base is not None and not p.is_absolute():
            p = base / p
        return p

    def get_choice(self, name: str, choices: tuple[str, ...], default: Any = REQUIRED) -> Any:
        value = self.get_str(name, default)
        if value not in choices:
            raise self.error(name, f"must be one of {', '.join(repr(c) for c in choices)}")
        return value

    def table(self, name: str, required: bool = False) -> TomlTable | None:
        self._seen.add(name)
        if name not in self._data:
            if required:
                raise self.error(name, "missing table")
            return None
        return TomlTable(self.file, self.key(name), self._data[name])

    def subtables(self, name: str) -> Iterator[tuple[str, TomlTable]]:
        """The tables nested in table `name` (e.g. [ina219.solar], [ina219.battery])."""
        outer = self.table(name)
        if outer is None:
            return
        for sub in list(outer._data):
            inner = outer.table(sub)
            assert inner is not None
            yield sub, inner

    def _range(self, name: str, value: float, lo: float | None, hi: float | None) -> None:
        # nan and inf are valid TOML floats, and nan passes every comparison: a
        # range check alone let `sample_interval_s = nan` through to a crash loop. An
        # integer too large for a float (tomllib has no limit) is refused here too.
        if not is_finite_number(value):
            raise self.error(name, f"must be a finite number, got {value}")
        if lo is not None and value < lo:
            raise self.error(name, f"must be at least {lo}, got {value}")
        if hi is not None and value > hi:
            raise self.error(name, f"must be at most {hi}, got {value}")

    def done(self) -> None:
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            raise self.error(unknown[0], "unknown key")


def toml_type(value: Any) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


@contextmanager
def checked(table: TomlTable) -> Iterator[TomlTable]:
    yield table
    table.done()
