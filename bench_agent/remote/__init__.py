"""City ops' commands: what a command is (`commands`), signed on ops' side
(`signing`; the `bench-ops` tool itself is in `bench_agent.ops.opsctl`), verified
and carried out on the bench (`processor`, with its `replay_store`, acting through
`agent_control`; ops' keys loaded by `ops_keys`)."""
