"""`python -m bench_agent` is the `bench-agent` command."""

import sys

from bench_agent.cli import main

sys.exit(main())
