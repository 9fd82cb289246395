"""Which records leave the outbox without being sent: the byte cap's and the age
limit's rules.

Apart from the outbox (outbox.py) because these two rules are where the outbox loses
data on purpose, and what each one spares (the records in flight, the records whose
age is not certain) is worth reading, and testing, on its own. The outbox applies
them inside its own transactions and counts every drop.

Bound
    `max_bytes` caps the sum of stored body sizes (UTF-8 bytes of the compact JSON;
    the file is larger by row and page overhead: 1.37x with 2 kB pages and the
    agent's 1.5 kB records; a week offline is a 20.7 MB file for 15.1 MB of bodies,
    see bench/bench_outbox_disk.py). On overflow the OLDEST rows not in flight are
    dropped in the same transaction as the insert; every drop is counted in
    `meta.drops_total`.
    An optional `max_file_bytes` sets `PRAGMA max_page_count` as a hard ceiling
    that protects the rest of the SD card; reaching it is `storage_full`.

Age (`purge_expired`)
    Age is measured with monotonic time only. For the current boot: `mono_now_s -
    mono_s`. For an older boot the time the Pi was off is unknown, so the age used
    is a LOWER bound: `(newest mono_s of that boot still stored - mono_s) +
    mono_now_s`. A record is dropped only when it is certainly older than
    `max_age_s`; the byte cap bounds whatever this keeps.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterable
from typing import Final

_EXPIRED: Final = (
    "SELECT o.seq, o.size FROM outbox o JOIN "
    "(SELECT boot_id, MAX(mono_s) AS last FROM outbox GROUP BY boot_id) b "
    "ON o.boot_id = b.boot_id "
    "WHERE (o.boot_id = :boot AND :now - o.mono_s > :age) "
    "OR (o.boot_id != :boot AND b.last - o.mono_s + :now > :age)"
)


def cap_victims(
    rows: Iterable[tuple[int, int]], total: int, max_bytes: int, in_flight: Collection[int]
) -> dict[int, int]:
    """The rows to drop so that `total` body bytes fit `max_bytes`: the oldest of
    `rows` ((seq, size) in seq order), stopping at the first one in flight (drops stay
    "the oldest"); seq -> size. Empty when `total` fits."""
    victims: dict[int, int] = {}
    freed = 0
    for seq, size in rows:
        if total - freed <= max_bytes or seq in in_flight:
            break
        victims[seq] = size
        freed += size
    return victims


def expired_rows(
    conn: sqlite3.Connection, boot_id: str, mono_now_s: float, max_age_s: float
) -> list[tuple[int, int]]:
    """(seq, size) of every stored record certainly older than `max_age_s` seconds,
    `boot_id`/`mono_now_s` being the current boot and its monotonic seconds now
    (older boots are aged by the lower bound above). Acked or in flight, it is the
    caller's to spare them."""
    rows: list[tuple[int, int]] = conn.execute(
        _EXPIRED, {"boot": boot_id, "now": mono_now_s, "age": max_age_s}
    ).fetchall()
    return rows
