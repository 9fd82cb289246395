"""`bench-ops send`: a signed command to one bench, or to many, and their replies, over MQTT.

    --bench tgk-alun-01                       one bench: its reply printed as JSON
    --bench a --bench b,c   --bench 'tgk-*'   several, or a glob: a table of replies

Each command (a UUID4 id, issued when it is sent, expiring `--ttl` seconds later, naming
its bench: the bench id is inside what is signed, so bench B refuses bench A's command
with `wrong_bench`, and a forged `bench` breaks the signature) is signed with ops'
Ed25519 key. The tool subscribes first, then publishes on `<prefix>/<bench>/cmd` (QoS 1,
not retained) and takes the reply with the same id from `<prefix>/<bench>/cmd/reply`.
A glob is matched against the benches with a retained `<prefix>/<bench>/status`. At
most `--concurrency` commands (default 20) wait for their reply at a time, over one
MQTT connection; each bench has `--timeout` seconds from its publish. Details:
`bulk_targets.py` (what `--bench` means), `bulk_send.py` (the network), `bulk_view.py`
(the table, `--json`).

Exit codes, one bench: 0 it replied ok; 1 it replied with an error; 2 no reply within
`--timeout`; 3 no connection to the broker (or a subscription refused); 64 a usage or
key-file error. Several benches or a glob, the same codes for the whole: 0 every bench
replied ok; 1 every bench replied, one or more with an error; 2 one or more did not
answer within `--timeout` (whatever the others replied; the table and `--json` say
who); 3 no connection (nothing was sent); 64 a usage or key-file error, or a glob that
matches no bench (nothing was sent).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench_agent.errors import UsageError
from bench_agent.ops.broker_access import BrokerAccess, add_broker_options, check_prefix
from bench_agent.ops.bulk_send import BulkSender, NoConnection, Outcome, Run
from bench_agent.ops.bulk_targets import parse_targets
from bench_agent.ops.bulk_view import render_json, render_table, warn
from bench_agent.ops.keys import load_private_key
from bench_agent.remote.commands import ACTIONS, KEY_ID_PATTERN
from bench_agent.remote.signing import new_command, sign_command

EXIT_OK = 0
EXIT_ERROR_REPLY = 1
EXIT_TIMEOUT = 2
EXIT_NO_CONNECTION = 3
DEFAULT_CONCURRENCY = 20
MAX_CONCURRENCY = 1000


def parse_args_pairs(pairs: Sequence[str]) -> dict[str, Any]:
    """`name=value` words as a dict; values are numbers when they parse as finite ones."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"argument {pair!r}: expected name=value")
        if name in out:
            raise UsageError(f"argument {name!r} given twice")
        value: Any = text
        try:
            value = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                pass
            else:
                if math.isfinite(number):
                    value = number
        out[name] = value
    return out


def exit_code(run: Run) -> int:
    """0 every bench replied ok; 2 one did not answer at all (whatever the others said);
    1 every bench answered and one or more with an error. For one bench: its own code."""
    kinds = {outcome.kind for outcome in run.outcomes}
    if "no_answer" in kinds:
        return EXIT_TIMEOUT
    return EXIT_ERROR_REPLY if "error" in kinds else EXIT_OK


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sd = commands.add_parser("send", help="send signed commands and print the replies")
    add_broker_options(sd)
    sd.add_argument("--key", type=Path, required=True, help="Ed25519 signing key (NAME.key)")
    sd.add_argument("--key-id", required=True, help="the name the benches know the key by")
    sd.add_argument(
        "--bench",
        required=True,
        action="append",
        help="bench id, several (repeat the flag, or a,b,c) or a glob ('tgk-*')",
    )
    sd.add_argument("--prefix", default="smartbench", help="topic prefix (default: smartbench)")
    sd.add_argument(
        "--timeout", type=float, default=10.0, help="seconds each bench has to reply (default: 10)"
    )
    sd.add_argument("--ttl", type=float, default=120.0, help="seconds a command stays valid")
    sd.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"commands awaiting their reply at a time (default: {DEFAULT_CONCURRENCY})",
    )
    sd.add_argument("--json", action="store_true", help="one JSON document of every reply")
    sd.add_argument("action", choices=ACTIONS)
    sd.add_argument("args", nargs="*", metavar="name=value")
    sd.set_defaults(run=_run)


def _run(opts: argparse.Namespace) -> int:
    targets = parse_targets(opts.bench)
    if not KEY_ID_PATTERN.fullmatch(opts.key_id):
        raise UsageError(f"key id {opts.key_id!r}: 1-64 characters of A-Za-z0-9._-")
    if not all(math.isfinite(v) and v > 0 for v in (opts.timeout, opts.ttl)):
        raise UsageError("--timeout and --ttl must be positive")
    if not 1 <= opts.concurrency <= MAX_CONCURRENCY:
        raise UsageError(f"--concurrency must be 1 to {MAX_CONCURRENCY}")
    check_prefix("--prefix", opts.prefix)
    key = load_private_key(opts.key)
    access = BrokerAccess.from_options(opts)
    args = parse_args_pairs(opts.args)

    def make_command(bench: str) -> dict[str, Any]:
        command = new_command(opts.action, args, bench=bench, now=datetime.now(UTC), ttl_s=opts.ttl)
        return sign_command(command, key, opts.key_id)

    sender = BulkSender(
        access,
        prefix=opts.prefix,
        targets=targets,
        make_command=make_command,
        timeout_s=opts.timeout,
        concurrency=opts.concurrency,
    )
    try:
        run = sender.run()
    except NoConnection as exc:
        print(f"bench-ops: {exc}", file=sys.stderr)
        return EXIT_NO_CONNECTION
    warn(run)
    if opts.json:
        print(render_json(run, opts.action, opts.timeout, opts.concurrency))
    elif targets.one_bench:
        _print_one(run.outcomes[0], opts.timeout)
    else:
        print(render_table(run, opts.timeout))
    return exit_code(run)


def _print_one(outcome: Outcome, timeout_s: float) -> None:
    """One bench named as it is: its reply as JSON, or why there is none on stderr."""
    if outcome.reply is not None:
        print(json.dumps(outcome.reply, indent=2, ensure_ascii=False))
    else:
        failure = f"no reply within {timeout_s:g} s"
        print(f"bench-ops: {failure} (command {outcome.command_id})", file=sys.stderr)
