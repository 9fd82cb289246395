"""`bench-ops`: city ops' tool to make signing keys, send signed commands to one bench
or many, see the fleet, archive every record and find what is missing, write reports,
and run the bridge from contract v2 to the v1 JSON the city's consumers read.

    bench-ops keygen --out DIR [--key-id NAME]
    bench-ops send --host H [--port P] [--tls-ca CA --tls-cert CERT --tls-key KEY]
                   [--username U --password-file F]
                   --key PRIVATE.key --key-id NAME --bench ID|ID,ID…|GLOB [--bench …]
                   [--prefix smartbench] [--timeout 10] [--ttl 120]
                   [--concurrency 20] [--json] ACTION [name=value ...]
    bench-ops bridge --host H [--port P] [--tls-ca CA --tls-cert CERT --tls-key KEY]
                   [--username U --password-file F]
                   [--prefix smartbench] [--v1-prefix smartbench-v1]
                   [--group bench-ops-bridge | --no-share] [--client-id ID]
                   [--session-expiry 86400]
                   [--status-interval 60] [--max-message-bytes 65536] [--debug]
    bench-ops fleet --host H [--port P] [TLS and password flags as above]
                   [--prefix smartbench] [--v1-prefix smartbench-v1]
                   [--batch-s 300] [--once] [--json]
    bench-ops archive --host H [--port P] [TLS and password flags as above]
                   [--db bench-archive.sqlite | --db postgresql://USER@HOST/DB]
                   [--prefix smartbench] [--group bench-ops-archive | --no-share]
                   [--client-id ID] [--session-expiry 604800] [--batch-records 1000]
                   [--max-rate 5000] [--retention-days DAYS] [--retention-every 3600]
                   [--status-interval 60] [--debug]
    bench-ops gaps [--db bench-archive.sqlite] [--since WHEN] [--bench ID]
                   [--min-silence 900] [--json]
    bench-ops report (--db ARCHIVE | --messages FILE ...) [--since DAY] [--until DAY]
                   [--bench ID|GLOB ...] [--tz Asia/Jakarta] --out report.html

`keygen` writes `DIR/NAME.key` (the PKCS#8 PEM private key, mode 0600, never
overwritten) and `DIR/NAME.pub` (the public key, base64 on one line): install
the `.pub` file in every bench's trusted-keys directory.

`send` builds a command (a UUID4 id, issued now, expiring after `--ttl` seconds,
naming the bench), signs it, subscribes to `<prefix>/<bench>/cmd/reply`, then
publishes on `<prefix>/<bench>/cmd` (QoS 1, not retained) and prints the reply
with the same id as JSON. Argument values are numbers when they parse as one,
else strings: `bench-ops send … usb.set port=usb1 state=off duration_s=1800`.
With several benches (`--bench` repeated, or `a,b,c`) or a glob (`--bench 'tgk-*'`,
matched against the benches with a retained status) it signs one command per bench
(the bench id inside the signature), keeps at most `--concurrency` waiting for their
reply over one connection, and prints a table of replies (bench, ok/error, the
result or error, round-trip ms) and the benches that did not answer within
`--timeout`; `--json` gives one document instead (`bench_agent/ops/send.py`).

`bridge` runs until SIGTERM (see `bench_agent/ops/bridge.py` and the README's "The
bridge"): it republishes every bench's v2 batches as v1 telemetry and events under
`--v1-prefix`, and mirrors their retained state and status there.

`fleet` shows every bench under the prefix, the worst first, from the retained status
and state and the newest record (`bench_agent/ops/fleet.py`, README "For city ops"):
`--once` prints once the retained messages have come, `--json` one JSON document.

`archive` runs until SIGTERM (`bench_agent/ops/archive.py`, README "For city ops"): it
stores every record and event once per (bench, seq_epoch, seq) in `--db` (a SQLite
file, or postgresql://…), acknowledging each message only after its rows are committed;
exit 75 when the database fails (a restart retries; nothing unacknowledged is lost).

`gaps` reads the archive (`bench_agent/ops/archive_gaps.py`): per bench and seq epoch
the seqs never stored (those the bench reported dropping kept apart), the silences,
restarts and clock corrections; `--json` for scripts.

`report` writes one self-contained HTML file of a period, for the fleet and each bench
(`bench_agent/ops/report.py`): energy, state of charge, outputs off and why, sessions,
hotspot, uptime and data completeness, with charts; it opens offline and prints well.

Exit codes: 0 the bench replied ok (`bridge`: stopped by a signal); 1 it replied with
an error; 2 no reply within `--timeout` seconds; 3 no connection to the broker; 64 a
usage or key-file error; 69 `report` or `plan` where matplotlib is not installed;
`bridge` only: 77 the broker refused a subscription or a republished message (its
ACL), 70 the MQTT thread ended. `send` to several benches or
a glob: 0 every bench replied ok; 1 every bench replied, some with an error; 2 some
did not answer within `--timeout` (whatever the others said); 3 no connection,
nothing sent; 64 also for a glob that matches no bench, nothing sent.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from bench_agent.errors import UsageError
from bench_agent.ops import archive_service, bridge_service, fleet_watch, gaps, keys, send

EXIT_USAGE = 64  # EX_USAGE from sysexits.h
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: a subcommand whose libraries are not installed

# Every subcommand is a module with `register(commands)`: it adds its parser, its flags
# and `set_defaults(run=handler)`; the handler takes the parsed options, returns the exit
# code and raises UsageError for a bad flag. A new subcommand adds its module here.
SUBCOMMANDS = (keys, send, bridge_service, fleet_watch, archive_service, gaps)
# Subcommands that need the ops extra's heavier libraries (matplotlib), imported only
# when present: a machine that runs only the bridge or the archive (its unit's venv)
# starts without them, and `bench-ops report` there says what to install.
OPTIONAL_SUBCOMMANDS = {"report": "bench_agent.ops.report", "plan": "bench_agent.ops.planner.cli"}


def _register_optional(
    commands: argparse._SubParsersAction[_Parser], name: str, module: str
) -> None:
    try:
        importlib.import_module(module).register(commands)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] == "bench_agent":
            raise  # our own module missing is a bug, not an optional library
        missing = exc.name
        # Takes any arguments (no prefix character: nothing is an option to it).
        stub = commands.add_parser(
            name, help=f"(needs {missing}: the ops extra)", prefix_chars="\0", add_help=False
        )
        stub.add_argument("args", nargs="*")

        def unavailable(_opts: argparse.Namespace) -> int:
            print(
                f"bench-ops {name}: needs {missing}, not installed here:"
                " pip install 'bench-agent[ops]'",
                file=sys.stderr,
            )
            return EXIT_UNAVAILABLE

        stub.set_defaults(run=unavailable)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse would exit 2, which is send's "timeout": exit 64 instead, on one
        # line that says where the usage is (tests/test_shipped_command_lines.py tells
        # a command line that does not parse by its "usage:").
        raise UsageError(f"{message} (usage: {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bench-ops", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(commands)
    for name, optional in OPTIONAL_SUBCOMMANDS.items():
        _register_optional(commands, name, optional)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        opts = _parser().parse_args(argv)
        return int(opts.run(opts))
    except UsageError as exc:
        print(f"bench-ops: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
