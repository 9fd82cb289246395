"""A clock the test moves by hand (the agent's `Clock` protocol), for the link's parts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class ManualClock:
    def __init__(self, synced: bool = True) -> None:
        self.mono = 1000.0
        self.start = datetime(2026, 12, 4, 5, 0, tzinfo=UTC)
        self.is_synced = synced

    def monotonic(self) -> float:
        return self.mono

    def wall(self) -> datetime:
        return self.start + timedelta(seconds=self.mono - 1000.0)

    def synced(self) -> bool:
        return self.is_synced

    def to_real_s(self, agent_s: float) -> float:
        return agent_s

    def advance(self, seconds: float) -> None:
        self.mono += seconds
