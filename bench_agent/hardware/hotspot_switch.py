"""The root side of the hotspot switch, run by `bench-hotspot@up.service` and `@down`.

Why a unit and not a polkit grant for nmcli: NetworkManager gives polkit no
connection id, so a rule that lets the agent activate its hotspot lets it take
down any profile, the cellular uplink included. polkit does see the unit name
and verb systemd passes for `manage-units`, so the agent (user bench-agent) is
allowed exactly `start` of these two instances, and this program, run as root
by them, switches only the profile named in the root-owned config (mode 0640
root:bench-agent: the agent reads it and cannot change it).

    python -I -m bench_agent.hardware.hotspot_switch up|down CONFIG

Runs `nmcli --wait 8 connection up|down id <profile>` (no shell; C locale;
stdin /dev/null) and exits with nmcli's status, which the agent reads back as
the unit's ExecMainStatus; a `down` of a profile that is not active exits 0
(off is what was asked for). 64: not up/down; 78: the config names no nmcli
hotspot; 127: nmcli cannot run. Standard library only, so it starts fast and imports nothing of the
agent that root need not run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib

EX_USAGE = 64
EX_CONFIG = 78
EX_NO_NMCLI = 127  # as a shell says "command not found"
NMCLI_WAIT_S = 8  # nmcli's own bound; the unit's TimeoutStartSec= bounds the rest
NMCLI_NOT_ACTIVE = 10  # nmcli(1): also what `down` of an inactive profile exits
VERBS = ("up", "down")


def hotspot_profile(config_text: str) -> str:
    """The NetworkManager profile of `[outputs.wifi]` with backend "nmcli"; ValueError if none.

    The same rule as the agent's config loader (only the wifi output may use
    nmcli, and it must name its profile), read on its own so that an unrelated
    mistake elsewhere in the file does not stop the hotspot from going off.
    """
    wifi = tomllib.loads(config_text).get("outputs", {}).get("wifi", {})
    if not isinstance(wifi, dict) or wifi.get("backend") != "nmcli":
        raise ValueError('[outputs.wifi] has no backend = "nmcli"')
    profile = wifi.get("nmcli_connection")
    if not isinstance(profile, str) or not profile.strip() or "\0" in profile:
        raise ValueError("[outputs.wifi] nmcli_connection is not a profile name")
    return profile


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in VERBS:
        print(f"usage: hotspot_switch {{{'|'.join(VERBS)}}} CONFIG (got {args!r:.100})")
        return EX_USAGE
    verb, config_path = args
    try:
        with open(config_path, encoding="utf-8") as config_file:
            profile = hotspot_profile(config_file.read())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError) as exc:
        print(f"hotspot {verb}: {config_path}: {exc}")
        return EX_CONFIG
    argv_nmcli = ["nmcli", "--wait", str(NMCLI_WAIT_S), "connection", verb, "id", profile]
    print(f"hotspot {verb}: nmcli connection {verb} id {profile!r}", flush=True)
    try:
        status = subprocess.call(
            argv_nmcli, stdin=subprocess.DEVNULL, env={**os.environ, "LC_ALL": "C"}
        )
    except OSError as exc:  # NetworkManager not installed, or nmcli not runnable
        print(f"hotspot {verb}: nmcli cannot run: {exc}")
        return EX_NO_NMCLI
    if verb == "down" and status == NMCLI_NOT_ACTIVE:
        print(f"hotspot down: {profile!r} was not active")
        return 0
    return status


if __name__ == "__main__":
    sys.exit(main())
