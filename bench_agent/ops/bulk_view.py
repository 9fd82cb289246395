"""`bench-ops send` to several benches, rendered: a table of replies on 80 columns (the
errors first, then the ok ones, each by bench id), the benches that did not answer, a
summary line; or one JSON document for scripts (`--json`)."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Sequence

from bench_agent.json_value import Json, JsonObject
from bench_agent.ops.bulk_send import Outcome, Run
from bench_agent.ops.fleet_view import fit

WIDTH = 80
BENCH_WIDTH = (12, 24)  # the BENCH column: at least, at most (a longer id overflows its row)


def _compact(value: Json) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def reply_text(outcome: Outcome) -> str:
    """The reply in one line: an error's `code: message`, an ok reply's result as
    `name=value` words (`output=usb2 state=off duration_s=1800.0`)."""
    reply = outcome.reply or {}
    if outcome.kind == "error":
        error = reply.get("error")
        if isinstance(error, dict):
            return f"{_compact(error.get('code'))}: {_compact(error.get('message'))}"
        return _compact(reply)
    result = reply.get("result")
    if isinstance(result, dict):
        return " ".join(f"{name}={_compact(value)}" for name, value in result.items())
    return _compact(result)


def counts(outcomes: Sequence[Outcome]) -> dict[str, int]:
    kinds = [o.kind for o in outcomes]
    return {
        "benches": len(kinds),
        "ok": kinds.count("ok"),
        "error": kinds.count("error"),
        "no_answer": kinds.count("no_answer"),
    }


def render_table(run: Run, timeout_s: float) -> str:
    """The replies (errors first), the benches without one, and a summary line."""
    replied = sorted(
        (o for o in run.outcomes if o.kind != "no_answer"),
        key=lambda o: (o.kind != "error", o.bench),
    )
    width = min(max([BENCH_WIDTH[0], *(len(o.bench) for o in replied)]), BENCH_WIDTH[1])
    lines: list[str] = []
    if replied:
        lines.append(f"{'BENCH':<{width}} {'RESULT':<6} {'MS':>6}  REPLY")
        for o in replied:
            head = f"{o.bench:<{width}} {o.kind:<6} {round(o.round_trip_ms or 0):>6}  "
            lines.append(head + fit(reply_text(o), max(10, WIDTH - len(head))))
    silent = sorted(o for o in (o.bench + _offline(o) for o in run.outcomes if not o.reply))
    if silent:
        lines.append(f"no answer within {timeout_s:g} s ({len(silent)}):")
        lines += textwrap.wrap(
            ", ".join(silent), WIDTH, initial_indent="  ", subsequent_indent="  "
        )
    c = counts(run.outcomes)
    lines.append(
        f"{c['benches']} bench{'es' if c['benches'] != 1 else ''}: {c['ok']} ok, "
        f"{c['error']} error, {c['no_answer']} no answer in {run.elapsed_s:.1f} s"
    )
    return "\n".join(lines)


def _offline(outcome: Outcome) -> str:
    return " (offline)" if outcome.online is False else ""


def outcome_json(outcome: Outcome) -> JsonObject:
    return {
        "bench": outcome.bench,
        "outcome": outcome.kind,
        "command_id": outcome.command_id,
        "round_trip_ms": None if outcome.round_trip_ms is None else round(outcome.round_trip_ms, 1),
        "online": outcome.online,
        "reply": outcome.reply,
    }


def render_json(run: Run, action: str, timeout_s: float, concurrency: int) -> str:
    """One document: the summary and every bench, in the order they were sent."""
    document: JsonObject = {
        "action": action,
        "timeout_s": timeout_s,
        "concurrency": concurrency,
        "elapsed_s": round(run.elapsed_s, 3),
        "discovery_s": round(run.discovery_s, 3),
        "counts": dict(counts(run.outcomes)),
        "disconnects": run.disconnects,
        "benches": [outcome_json(o) for o in run.outcomes],
    }
    return json.dumps(document, indent=2, ensure_ascii=False)


def warn(run: Run) -> None:
    """The run's warnings on stderr, one line each."""
    lines = list(run.warnings)
    if run.disconnects:
        lines.append(
            f"the connection to the broker dropped {run.disconnects} time(s) during the run:"
            " replies sent meanwhile may be lost"
        )
    for line in lines:
        print(f"bench-ops: {line}", file=sys.stderr)
