"""`bench-ops plan`: a what-if planner for bench owners.

A year (or chosen months) of weather drawn from a place's monthly solar climate,
minute by minute through the simulated bench's battery and charge controller and
through the agent's REAL controller, policy and state-of-charge estimator; then
what the public would have seen: evenings each load went dark, service lost,
energy harvested, delivered and wasted, and a panel x battery sizing sweep.

Modules: `climate` (the monthly climate file), `sun` (sun and clear sky),
`weather` (the seeded draw), `model` (the bench and its what-ifs, the usage
profile), `run` (the minute loop), `summary` (what a run means), `sweep`,
`pvgis` (PVGIS's off-grid method, the cross-check), `report` (HTML and charts),
`history` (a real bench's days, as `bench-ops report` counts them), `calibrate` (the
model against them, and scaled to them), `cli` (the subcommand).
"""
