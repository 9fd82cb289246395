"""bench-agent: the edge agent of a solar-powered public smart bench."""

__version__ = "0.1.0"
