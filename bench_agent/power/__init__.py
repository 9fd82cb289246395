"""Power: what the bench measures and decides.

The pure policy (`policy.decide`), its one owner of the outputs
(`controller`), the state of charge (`soc`), the per-sample reads and interval
statistics (`sampler`), the daily counters ops report from (`counters`) and
when to power-cycle a hung uplink (`uplink`). Nothing here knows MQTT, the
socket or systemd.
"""
