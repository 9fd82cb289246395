# The two commands of the README. Both set the machine up first (idempotent).
PY := .venv/bin/python
DURATION ?=

.PHONY: setup demo test lint typecheck bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m bench_agent.demo $(if $(DURATION),--duration $(DURATION),)

lint: setup
	.venv/bin/ruff check bench_agent tests bench
	.venv/bin/ruff format --check bench_agent tests bench

typecheck: setup
	.venv/bin/mypy

test: lint typecheck
	$(PY) -m pytest -q -p randomly

bench: setup  # the figures in the README; a few minutes
	$(PY) bench/footprint.py 60
	$(PY) bench/bench_drain.py
	$(PY) bench/bench_outbox_disk.py
	$(PY) bench/bench_vedirect.py
	$(PY) bench/bench_unit_lifecycle.py

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
