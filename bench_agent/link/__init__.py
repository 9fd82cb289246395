"""The link to the city: the MQTT contract and getting every record there.

`payloads` is the contract (its JSON Schemas are in `bench_agent/schemas/`),
`outbox` the SQLite store every record is committed to first, `publisher`
drains it to the broker (acknowledged by PUBACK), and `mqtt` is the only
module that knows paho.
"""
