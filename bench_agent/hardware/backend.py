"""The ONE place that picks real or simulated hardware for a configuration.

`build_hardware(cfg)` returns a `Hardware` bundle (`bundle.py`): channel
openers for the sampler, the switched outputs, the tamper input, the CPU
temperature, the clock, and `tick()` (which advances the simulated bench; on a
Pi it retries a missing tamper input). The rest of the agent never asks which
backend it runs on. The simulator is imported only when chosen: a bench never
loads it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from bench_agent.config import Config
from bench_agent.hardware.bundle import Hardware
from bench_agent.hardware.pi import build_pi_hardware


class HardwareFactory(Protocol):
    """How the agent gets its hardware (`build_hardware` is one)."""

    def __call__(self, cfg: Config, on_tamper: Callable[[bool], None]) -> Hardware: ...


def build_hardware(cfg: Config, on_tamper: Callable[[bool], None]) -> Hardware:
    if cfg.hardware.backend == "sim":
        from bench_agent.hardware.sim.bench import build_simulated_hardware  # noqa: PLC0415

        return build_simulated_hardware(cfg, on_tamper)
    return build_pi_hardware(cfg, on_tamper)
