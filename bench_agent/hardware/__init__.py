"""Hardware seams: each kind of hardware behind a small Protocol.

Real and simulated implementations live in the submodules; `backend.py` is the
ONE place that picks which to build for a configuration.
"""
