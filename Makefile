# The two commands of the README. Both set the machine up first (idempotent).
PY := .venv/bin/python
DURATION ?=

.PHONY: setup demo test lint typecheck bench bench-wire bench-archive lock rehearse-pi clean-rehearsal clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m bench_agent.demo $(if $(DURATION),--duration $(DURATION),)

lint: setup
	.venv/bin/ruff check bench_agent tests bench
	.venv/bin/ruff format --check bench_agent tests bench

typecheck: setup
	.venv/bin/mypy

# Workers for pytest-xdist: the tests mostly wait on real processes (mosquitto, the
# agent in sped-up real time, systemd in a sandbox), so more workers than the
# machine's 2 cores pay; the README's Tests section has the measurements.
TEST_WORKERS ?= 4

test: lint typecheck
	$(PY) -m pytest -q -p randomly -n $(TEST_WORKERS)

bench: setup  # the figures in the README; a few minutes
	$(PY) bench/footprint.py 60
	$(PY) bench/bench_drain.py
	$(PY) bench/bench_bridge.py
	$(PY) bench/bench_bulk_send.py
	$(PY) bench/bench_outbox_disk.py
	$(PY) bench/bench_vedirect.py
	$(PY) bench/bench_unit_lifecycle.py
	$(PY) bench/bench_encoding.py
	$(PY) bench/bench_link_cost.py
	$(PY) bench/bench_sd_day.py 60

bench-archive: setup  # 1,000 benches back after a 6-hour outage, into the archive: ~10 minutes
	$(PY) bench/bench_fleet_archive.py --json .cache/bench-fleet-archive.json

bench-wire: setup  # contract 1 and 2 side by side in real time: 35 minutes
	$(PY) bench/bench_wire_hour.py 35

lock: setup  # deploy/requirements.lock: what install.sh installs on a bench, pinned with hashes
	.venv/bin/pip-compile --quiet --generate-hashes --extra pi --strip-extras --allow-unsafe \
		--no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
		--output-file deploy/requirements.lock pyproject.toml

rehearse-pi:  # root; arm64 Raspberry Pi OS (bookworm) under qemu: install and run; a few minutes
	bash scripts/rehearse-pi.sh

clean-rehearsal:  # the arm64 root rehearse-pi keeps between runs
	rm -rf .cache/pi-rehearsal

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
