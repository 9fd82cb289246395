"""Time sources: the system clock on a bench, a scaled and scriptable one in simulation.

A Raspberry Pi has no real-time clock: it boots with a stale wall clock until NTP
syncs. So the agent measures intervals with a monotonic clock and asks the clock
whether the wall time can be trusted yet (`synced()`).

The simulated clock runs `speed` times faster than real time, so a simulated day
passes in minutes; every interval in the agent (sampling, publishing, overrides)
is in *agent seconds*, and `to_real_s()` converts a wait into real seconds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from bench_agent import statefile
from bench_agent.checks import is_finite_number

# systemd-timesyncd creates this file once it has synchronised the clock.
TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")
_TIME_ERROR = 5  # adjtimex(2) return value: "clock not synchronized"


BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
# Where the kernel has no boot id (not Linux): no two runs can be told to be the same boot.
UNKNOWN_BOOT_ID = "unknown"


def read_boot_id(path: Path = BOOT_ID_PATH) -> str:
    """The kernel's boot id: the boot every record's monotonic time counts from.

    "unknown" where there is none (not Linux), the same in the outbox and on the wire.
    """
    try:
        return path.read_text().strip()
    except OSError:
        return UNKNOWN_BOOT_ID


def iso_utc(when: datetime | float) -> str:
    """ISO 8601 in UTC with millisecond precision and a Z, as in every payload.

    `when`: an aware datetime, or seconds since the epoch.
    """
    moment = datetime.fromtimestamp(when, tz=UTC) if isinstance(when, int | float) else when
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def next_due(due: float, now: float, every: float) -> float:
    """The next time a periodic job is due after running at `now` (it was due at
    `due`): ticks missed in a stall are skipped, not run in a burst to catch up."""
    return due + every * max(1, int((now - due) // every) + 1)


class Clock(Protocol):
    def monotonic(self) -> float:
        """Agent seconds since an arbitrary point in this boot; never jumps."""

    def wall(self) -> datetime:
        """The wall-clock time now, aware, in UTC. May be wrong when not `synced()`."""

    def synced(self) -> bool:
        """True when the wall clock is known to be right (NTP synchronised)."""

    def to_real_s(self, agent_s: float) -> float:
        """How many real seconds `agent_s` agent seconds take."""


def kernel_clock_synced() -> bool:
    """Whether the kernel says its clock is synchronised, as timedatectl decides it.

    The flag file of systemd-timesyncd is checked first; otherwise `adjtimex(2)`
    with no modes (a pure read) returns TIME_ERROR while the clock is unsynchronised.
    """
    if TIMESYNCD_FLAG.exists():
        return True
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        # struct timex is 208 bytes on 64-bit Linux; a zeroed, larger buffer means
        # modes = 0, which only reads.
        buf = ctypes.create_string_buffer(512)
        state = int(libc.adjtimex(buf))
    except (OSError, AttributeError):
        return False
    return state not in (-1, _TIME_ERROR)


class SystemClock:
    """The bench's own clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> datetime:
        return datetime.now(UTC)

    def synced(self) -> bool:
        return kernel_clock_synced()

    def to_real_s(self, agent_s: float) -> float:
        return agent_s


class SimulatedClock:
    """A clock for the simulated bench: scaled, with a wall time scenarios can jump.

    `monotonic()` starts at the real monotonic time (so uptime looks like a Pi's)
    and then runs `speed` times faster than real time.
    """

    def __init__(self, start: datetime, speed: float, synced: bool = True) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._real_origin = time.monotonic()
        self._wall_origin = start.astimezone(UTC)
        self._wall_error = timedelta(0)  # how wrong the wall clock is (scenario clock jumps)
        self._synced = synced
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        return self._real_origin + (time.monotonic() - self._real_origin) * self.speed

    def elapsed(self) -> float:
        """Simulated seconds since the clock was made."""
        return (time.monotonic() - self._real_origin) * self.speed

    def true_wall(self) -> datetime:
        """The simulated *true* time: what the sun and the physics follow."""
        return self._wall_origin + timedelta(seconds=self.elapsed())

    def wall(self) -> datetime:
        with self._lock:
            return self.true_wall() + self._wall_error

    def synced(self) -> bool:
        with self._lock:
            return self._synced

    def to_real_s(self, agent_s: float) -> float:
        return agent_s / self.speed

    def set_wall_error(self, error: timedelta, synced: bool) -> None:
        """Scenario hook: make the wall clock wrong by `error` (or right, with 0)."""
        with self._lock:
            self._wall_error = error
            self._synced = synced


class TimeFloor:
    """A lower bound for the real time that survives reboots, for a Pi without an RTC.

    Until NTP syncs, the wall clock of a Pi may be years off (it resumes from the
    last fake-hwclock save, or 1970), so command expiry and age cannot be checked
    against it; the replay store alone then protects, and a command signed a year
    ago and never delivered would run. This keeps what is known for certain:
    the last wall time seen while synced, and the newest `issued_at` of a command
    that was accepted (signed, so ops' clock vouches for it). Either is a time that
    has passed; the monotonic time since it was learned has passed since too.

    Persisted in `path` (a few bytes, rewritten at most every `save_every_s` while
    synced, at once when a command raises it, and at the stop).
    """

    def __init__(
        self,
        path: Path | None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        save_every_s: float = 3600.0,
    ) -> None:
        self._path = path
        self._monotonic = monotonic
        self._save_every_s = save_every_s
        self._floor_s: float | None = None  # epoch seconds...
        self._floor_mono: float = monotonic()  # ...known at this monotonic time
        self._saved_mono: float | None = None
        self._load()

    def _load(self) -> None:
        text = None if self._path is None else statefile.read_text(self._path)
        if text is None:
            return  # none yet, or unreadable: no floor, as on a new bench
        try:
            value = json.loads(text)["t"]
        except (ValueError, KeyError, TypeError):
            return
        if is_finite_number(value):
            self._floor_s = float(value)

    def now_at_least(self) -> float | None:
        """Epoch seconds that have certainly passed; None when nothing is known."""
        if self._floor_s is None:
            return None
        return self._floor_s + max(self._monotonic() - self._floor_mono, 0.0)

    def observe(self, epoch_s: float, *, save_now: bool) -> None:
        """`epoch_s` has passed (a synced clock's reading, or an accepted issued_at)."""
        if not is_finite_number(epoch_s):
            return
        current = self.now_at_least()
        if current is not None and epoch_s <= current:
            return
        self._floor_s, self._floor_mono = epoch_s, self._monotonic()
        due = self._saved_mono is None or self._monotonic() - self._saved_mono >= self._save_every_s
        if save_now or due:
            self.save()

    def save(self) -> None:
        """Not fsynced: a power cut can only leave an older floor, which is still true."""
        floor = self.now_at_least()
        if self._path is None or floor is None:
            return
        self._saved_mono = self._monotonic()
        statefile.write_json(self._path, {"t": floor})  # a full card: logged, not fatal
