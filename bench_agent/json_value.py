"""The type of what goes out as JSON (MQTT payloads, the control socket, state files).

Snapshots inside the agent are frozen dataclasses; their `payload()` turns them
into these at the edge. A `Json` value type-checks what is built (mypy rejects a
datetime or a dataclass where JSON is promised); what is *read* from the outside
(a command, a socket request, a state file) stays `Any` until its parser has
checked it, and only there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeAlias

# Read-only containers: a dict[str, float] is a Mapping[str, Json] (Mapping is
# covariant in its values; dict is not), so built payloads need no casts.
Json: TypeAlias = "bool | int | float | str | Sequence[Json] | Mapping[str, Json] | None"
JsonObject: TypeAlias = "dict[str, Json]"
