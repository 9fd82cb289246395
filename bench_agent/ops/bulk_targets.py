"""Which benches `bench-ops send --bench …` means, pure: the flag's words in, bench ids out.

`--bench` is repeatable and each value may list several, comma-separated. A word with
`*`, `?` or `[…]` in it is a glob (shell-style, `fnmatch`), matched against the benches
that exist under the prefix (those with a retained `status`: the caller learns them from
the broker); any other word must be a bench id (`BENCH_PATTERN`) and is taken as it is,
whether or not the broker knows it (a bench that never connected can still be commanded:
its command waits for it until `--ttl`).

Nothing is sent unless every word means something: a glob that matches no bench is a
`UsageError`, as a malformed id is.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bench_agent.errors import UsageError
from bench_agent.remote.commands import BENCH_PATTERN

GLOB_CHARS = frozenset("*?[")
# A glob is made of what a bench id may hold, and the glob's own characters.
GLOB_PATTERN = re.compile(r"[a-z0-9*?\[\]!-]{1,200}")


@dataclass(frozen=True)
class Targets:
    """The words of `--bench`, split: bench ids and globs, each in the order given."""

    ids: tuple[str, ...]
    globs: tuple[str, ...]

    @property
    def one_bench(self) -> bool:
        """One bench named as it is: `send`'s original form (its reply printed as JSON)."""
        return len(self.ids) == 1 and not self.globs

    @property
    def words(self) -> tuple[str, ...]:
        return self.ids + self.globs


def is_glob(word: str) -> bool:
    return any(c in GLOB_CHARS for c in word)


def parse_targets(values: Sequence[str]) -> Targets:
    """`--bench` values (each comma-separated) as ids and globs, or UsageError."""
    ids: list[str] = []
    globs: list[str] = []
    for value in values:
        for word in (w.strip() for w in value.split(",")):  # "a, b" as "a,b"
            if not word:
                raise UsageError(f"--bench {value!r}: an empty bench id")
            if is_glob(word):
                if not GLOB_PATTERN.fullmatch(word):
                    raise UsageError(
                        f"--bench {word!r}: a glob of bench-id characters and * ? [ ] !"
                    )
                globs.append(word)
            elif BENCH_PATTERN.fullmatch(word):
                ids.append(word)
            else:
                raise UsageError(f"bench id {word!r}: must match [a-z0-9][a-z0-9-]{{0,62}}")
    return Targets(tuple(dict.fromkeys(ids)), tuple(dict.fromkeys(globs)))


def expand(targets: Targets, known: Iterable[str], prefix: str) -> list[str]:
    """The benches `targets` means, each once: the ids in the order given, then each
    glob's matches among `known` (sorted). UsageError naming a glob that matches none."""
    benches = sorted(b for b in set(known) if BENCH_PATTERN.fullmatch(b))
    chosen = dict.fromkeys(targets.ids)
    for glob in targets.globs:
        matches = [b for b in benches if fnmatch.fnmatchcase(b, glob)]
        if not matches:
            raise UsageError(
                f"--bench {glob!r} matches no bench under {prefix}/ "
                f"({len(benches)} bench{'es' if len(benches) != 1 else ''} "
                "with a retained status)"
            )
        chosen.update(dict.fromkeys(matches))
    return list(chosen)
