"""What the bridge has seen: the records it already passed on (dedupe), the seqs it
has not seen between those it has (gaps), and its counters. Pure: no MQTT here.

A record's key is the contract's `(bench, seq_epoch, seq)`. Per `(bench, epoch)`
the ledger keeps the seqs it has seen as sorted disjoint intervals, so a bench
whose records arrive in order costs one interval however long it runs, and one
that sends its newest record first and its backlog after (as the bench's
publisher does after an outage) only fills the hole it opened. A seq inside an
interval is a duplicate; a hole between two intervals is a gap, counted until
the seqs that fill it arrive. Seqs below the first one seen are not gaps: they
were before this instance started.

Memory is bounded: at most `max_intervals` per `(bench, epoch)` (past that the
oldest interval is forgotten: its seqs, should they come again, pass as new —
a duplicate, never a loss — and the holes below it are no longer counted), and
at most `max_tracks` `(bench, epoch)` pairs, the least recently seen forgotten
first.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

Key = tuple[str, str, int]  # (bench, seq_epoch, seq)

MAX_INTERVALS = 256
MAX_TRACKS = 50_000
LOG_EVERY_S = 60.0  # an undecodable payload is logged once per bench per minute at most


class SeqTrack:
    """The seqs seen of one `(bench, epoch)`, as sorted disjoint inclusive intervals."""

    def __init__(self, max_intervals: int = MAX_INTERVALS) -> None:
        if max_intervals < 1:
            raise ValueError(f"max_intervals must be >= 1, got {max_intervals}")
        self.max_intervals = max_intervals
        self._starts: list[int] = []
        self._ends: list[int] = []
        self.forgotten = 0  # intervals dropped to stay within max_intervals

    def seen(self, seq: int) -> bool:
        i = bisect_right(self._starts, seq) - 1
        return i >= 0 and seq <= self._ends[i]

    def add(self, seq: int) -> bool:
        """Note `seq`; True when it is new, False when it was seen already."""
        starts, ends = self._starts, self._ends
        i = bisect_right(starts, seq) - 1  # the interval starting at or below seq
        if i >= 0 and seq <= ends[i]:
            return False
        joins_left = i >= 0 and ends[i] == seq - 1
        joins_right = i + 1 < len(starts) and starts[i + 1] == seq + 1
        if joins_left and joins_right:
            ends[i] = ends[i + 1]
            del starts[i + 1], ends[i + 1]
        elif joins_left:
            ends[i] = seq
        elif joins_right:
            starts[i + 1] = seq
        else:
            starts.insert(i + 1, seq)
            ends.insert(i + 1, seq)
            if len(starts) > self.max_intervals:
                del starts[0], ends[0]
                self.forgotten += 1
        return True

    def missing(self) -> int:
        """Seqs not seen between the lowest and the highest seen: the open gaps."""
        return sum(self._starts[k + 1] - self._ends[k] - 1 for k in range(len(self._starts) - 1))

    @property
    def intervals(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))


@dataclass
class Counters:
    """Since the bridge started. `undecodable` and `refused` are by problem / reason."""

    batches: int = 0  # v2 messages decoded
    records_in: int = 0  # records in them
    records_out: int = 0  # records republished (not duplicates)
    duplicates: int = 0  # records dropped as already passed on
    messages_out: int = 0  # v1 messages published (telemetry, event)
    retained_mirrored: int = 0  # state/status messages mirrored
    undecodable: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)  # republishes the broker refused


class Ledger:
    """Dedupe and gaps over every bench, the counters, and the log throttle."""

    def __init__(self, max_intervals: int = MAX_INTERVALS, max_tracks: int = MAX_TRACKS) -> None:
        self.max_intervals = max_intervals
        self.max_tracks = max_tracks
        self._tracks: OrderedDict[tuple[str, str], SeqTrack] = OrderedDict()
        self.counters = Counters()
        self._logged: dict[str, float] = {}

    def _track(self, bench: str, epoch: str) -> SeqTrack:
        key = (bench, epoch)
        track = self._tracks.get(key)
        if track is None:
            track = self._tracks[key] = SeqTrack(self.max_intervals)
            if len(self._tracks) > self.max_tracks:
                self._tracks.popitem(last=False)
        else:
            self._tracks.move_to_end(key)
        return track

    def seen(self, key: Key) -> bool:
        bench, epoch, seq = key
        track = self._tracks.get((bench, epoch))
        return track is not None and track.seen(seq)

    def admit(self, key: Key) -> bool:
        """Note the key; True when it is new (pass the record on), False for a duplicate."""
        bench, epoch, seq = key
        return self._track(bench, epoch).add(seq)

    def gaps(self) -> dict[tuple[str, str], int]:
        """Open gaps (missing seqs) by `(bench, epoch)`, only where there are some."""
        found = {key: track.missing() for key, track in self._tracks.items()}
        return {key: n for key, n in found.items() if n}

    def should_log(self, bench: str, now_mono: float) -> bool:
        """At most once per bench per LOG_EVERY_S: True when this one may be logged."""
        last = self._logged.get(bench)
        if last is not None and now_mono - last < LOG_EVERY_S:
            return False
        if len(self._logged) > 10_000:  # a flood of bench names: keep only the recent
            self._logged = {b: t for b, t in self._logged.items() if now_mono - t < LOG_EVERY_S}
        self._logged[bench] = now_mono
        return True
