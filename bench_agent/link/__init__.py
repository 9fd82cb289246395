"""The link to the city: the MQTT contract and getting every record there.

`payloads` is the contract (its JSON Schemas are in `bench_agent/schemas/`),
`recorder` commits every record to the `outbox` (SQLite) first and hands it
to the `publisher`, which drains it to the broker (acknowledged by PUBACK);
`state` is the retained state and status, `health` telemetry's health block,
`clock_sync` corrects records stamped before NTP synced, and `mqtt` is the
only module that knows paho.
"""
