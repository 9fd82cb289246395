"""City ops' commands: signed on ops' side (`opsctl`, the `bench-ops` tool),
verified and carried out on the bench (`commands`)."""
