"""Power: what the bench measures and decides.

The pure policy (`policy.decide`, with `policy_config` and `policy_state`),
the one owner of the outputs (`controller`), the state of charge (`soc`, with
a charge controller's or battery monitor's readings from `charger_feed`), the
per-sample reads and interval statistics (`sampler`), the daily counters ops
report from (`counters`, kept by `counter_keeper`) and when to power-cycle a
hung uplink (`uplink`, carried out by `uplink_supervisor`). Nothing here knows MQTT, the
socket or systemd.
"""
