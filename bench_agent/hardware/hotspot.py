"""The Pi's own radio as a NetworkManager hotspot: read with nmcli, switched through systemd.

`NmcliHotspot` is the agent's side (a `Switch` that can also count its
clients); `hotspot_switch.py` is the root side that the switch units run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable

from bench_agent.errors import BenchAgentError

log = logging.getLogger(__name__)


class NmcliError(BenchAgentError, OSError):
    """nmcli could not read or switch the hotspot. `fault` is a short, stable code.

    An OSError, so the controller's `except OSError` around `Switch.set` reports
    it as an `output_error` like any output that cannot be driven.
    """

    def __init__(self, fault: str, message: str) -> None:
        super().__init__(message)
        self.fault = fault


# nmcli(1) "EXIT STATUS"; any other status is reported as nmcli_exit_<n>.
_NMCLI_EXIT_FAULTS = {
    3: "nmcli_wait_expired",  # --wait ran out; NetworkManager may still finish the job
    4: "activation_failed",
    5: "deactivation_failed",
    8: "networkmanager_not_running",
    10: "profile_missing",  # for `show` and `up`; a `down` exits 10 when already inactive
}
_NM_ACTIVE_STATES = frozenset({"activating", "activated", "deactivating", "deactivated"})
_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")  # IFNAMSIZ is 16, with its NUL
# deploy/bench-hotspot@.service: root switches the config's profile, the agent may only
# start these two instances (polkit). See bench_agent/hardware/hotspot_switch.py for why.
HOTSPOT_SWITCH_UNIT = "bench-hotspot@{verb}.service"
_SYSTEMCTL_UNIT_NOT_FOUND = 5  # systemctl(1) "EXIT STATUS": no such unit
# hotspot_switch's own exit statuses, besides nmcli's.
_SWITCH_EXIT_FAULTS = {64: "switch_refused", 78: "switch_config", 127: "nmcli_missing"}


def _run_bounded(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run `argv` (no shell), stdin from /dev/null, C locale; at most `timeout_s` seconds.

    The child gets its own session so that on timeout its whole process group is
    killed: a wrapper script whose child still holds the pipes would otherwise
    keep `communicate()` waiting long after the timeout. Raises OSError when the
    program cannot be started, `subprocess.TimeoutExpired` after the timeout.
    """
    with subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,  # nothing can ever prompt (nmcli --ask is never used)
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        encoding="utf-8",
        errors="replace",  # garbage bytes are unreadable output, not a crash
        env={**os.environ, "LC_ALL": "C"},  # untranslated states and messages
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise  # leaving the with-block closes the pipes and reaps the child
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def _last_line(*texts: str) -> str:
    for text in texts:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if lines:
            return lines[-1][:200]
    return "no output"


def _parse_active_state(stdout: str) -> tuple[str, str | None]:
    """`-t -f GENERAL.STATE,GENERAL.DEVICES connection show` -> (state, device or None).

    An inactive profile has no active-connection section: nmcli prints nothing.
    Raises ValueError for anything else nmcli is not known to print.
    """
    fields: dict[str, list[str]] = {"GENERAL.STATE": [], "GENERAL.DEVICES": []}
    for line in stdout.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep or key not in fields:
            raise ValueError(f"unexpected line {line[:80]!r}")
        fields[key].append(value.strip())
    states, devices = fields["GENERAL.STATE"], fields["GENERAL.DEVICES"]
    if not states and not devices:
        return "deactivated", None
    if not states or any(state not in _NM_ACTIVE_STATES for state in states):
        raise ValueError(f"unexpected state {states!r:.80}")
    # Two profiles with the same name both show up; either one active serves phones.
    state = "activated" if "activated" in states else states[0]
    device = devices[0] if len(devices) == 1 and _IFNAME.fullmatch(devices[0]) else None
    return state, device


class NmcliHotspot:
    """The Pi's own radio as a NetworkManager hotspot profile, switched through systemd.

    Exactly these invocations, never through a shell and never with a secret
    (the profile holds its own PSK):

        nmcli -t -f GENERAL.STATE,GENERAL.DEVICES connection show id <profile>
        systemctl --no-ask-password start bench-hotspot@up.service
        systemctl --no-ask-password start bench-hotspot@down.service
        systemctl show --property=ExecMainStatus --value bench-hotspot@<verb>.service
                                                           (after a failed switch)
        iw dev <ifname> station dump                       (client_count only)

    Reading needs no privilege. Switching does, and NetworkManager cannot
    limit it to one profile, so the agent never runs `nmcli up|down` itself:
    polkit lets it start the two root-owned instances of
    `bench-hotspot@.service`, which switch the profile named in the root-owned
    config with `nmcli --wait 8` (`hotspot_switch.py`). nmcli's exit status
    comes back as the unit's ExecMainStatus and names the fault.

    `is_on` is what NetworkManager last reported or last accepted, never what
    was merely asked for. It is learned at start, re-read every
    `confirm_every_s` and whenever a failure left it unknown. An `up` is never
    repeated while the profile is known to be active: re-activating a hotspot
    restarts the access point and drops every phone on it.

    Each call is bounded (`timeout_s`) so a hung NetworkManager costs the main
    loop at most that long. A failed call (non-zero exit, nmcli or the unit
    missing, not authorized, timeout, unreadable output) raises
    `NmcliError`, keeps its code in `fault` until nmcli works again, is logged
    once per streak, and is not retried before a backoff (`retry_min_s`
    doubling to `retry_max_s`): meanwhile `set` raises at once. The
    constructor never raises for nmcli: a broken hotspot must not stop the
    agent's telemetry and USB ports.
    """

    def __init__(
        self,
        name: str,
        connection: str,
        safe_state_on: bool,
        *,
        timeout_s: float = 12.0,
        stop_timeout_s: float = 2.0,
        retry_min_s: float = 10.0,
        retry_max_s: float = 300.0,
        confirm_every_s: float = 300.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Times in seconds. The defaults keep a hung switch (nmcli's own --wait 8,
        plus the unit's start) well inside the 30 s systemd watchdog, and a stop
        (2 s) inside the agent's 5 s stop budget."""
        self.name = name
        self.connection = connection
        self.safe_state_on = safe_state_on
        self.fault: str | None = None  # a code from NmcliError while nmcli keeps failing
        self._timeout_s = timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._retry_min_s = retry_min_s
        self._retry_max_s = retry_max_s
        self._confirm_every_s = confirm_every_s
        self._monotonic = monotonic
        self._on = False
        self._known = False  # _on was reported or accepted by NetworkManager; no failure since
        self._wanted = safe_state_on  # what set() was last asked for
        self._switch_failed = False  # the streak began with a failed up/down, not a read
        self._device: str | None = None  # the radio's interface, from GENERAL.DEVICES
        self._failures = 0
        self._retry_at = -math.inf
        self._check_at = -math.inf  # when `is_on` asks NetworkManager again
        self._iw_failing = False
        self._closed = False
        with contextlib.suppress(NmcliError):  # logged and kept in `fault`
            self._refresh()
        with contextlib.suppress(NmcliError):
            self.set(safe_state_on)

    # -- the Switch interface -----------------------------------------------------

    def set(self, on: bool) -> None:
        """Switch the hotspot; raises NmcliError (an OSError) when it cannot."""
        if self._closed:
            raise NmcliError("closed", f"hotspot {self.name} is closed")
        self._wanted = on
        wait = self._retry_at - self._monotonic()
        if wait > 0:
            raise NmcliError(
                self.fault or "nmcli_failing",
                f"hotspot {self.name}: nmcli failing ({self.fault}), next try in {wait:.0f} s",
            )
        if not self._known:
            self._refresh()  # a timed-out `up` may have completed: ask before acting
        if self._known and self._on == on:
            return
        self._switch(on, self._timeout_s)

    @property
    def is_on(self) -> bool:
        """True only while NetworkManager has the profile activated (as last learned).

        May ask NetworkManager (bounded by `timeout_s`): when the state is due for
        a re-read or unknown after a failure, and no backoff is running.
        """
        if not self._closed and self._monotonic() >= max(self._check_at, self._retry_at):
            with contextlib.suppress(NmcliError):
                self._refresh()
        return self._on

    def close(self) -> None:
        """Back to the safe state, bounded by `stop_timeout_s`, backoff or not. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            # Bounded by stop_timeout_s; a switch still running then is finished by
            # systemd after the agent has gone (killing systemctl does not cancel the job).
            if not self.safe_state_on:
                # Sent even when known off: the last word on stop should be NetworkManager's.
                self._switch(False, self._stop_timeout_s)
            elif not (self._known and self._on):
                self._switch(True, self._stop_timeout_s)
        except NmcliError as exc:
            log.warning(
                "hotspot %s: could not return to its safe state: %s",
                self.name,
                exc,
                extra={"output": self.name, "fault": exc.fault},
            )

    # -- optional extras ----------------------------------------------------------

    def client_count(self) -> int | None:
        """Wi-Fi stations associated with the hotspot, or None when it cannot tell.

        Counts `Station ` lines of `iw dev <ifname> station dump`; the MAC
        addresses in that dump are neither kept nor logged. 0 while the hotspot
        is known off. Under the hardened unit `iw` needs AF_NETLINK.
        """
        if self._closed:
            return None
        if not self.is_on:
            return 0 if self._known else None
        if self._device is None and self._monotonic() >= self._retry_at:
            with contextlib.suppress(NmcliError):
                self._refresh()
        if self._device is None or not self._on:
            return None
        argv = ["iw", "dev", self._device, "station", "dump"]
        try:
            result = _run_bounded(argv, self._timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self._iw_failed(type(exc).__name__)
            return None
        if result.returncode != 0:
            self._iw_failed(f"exit {result.returncode}")
            return None
        self._iw_failing = False
        return sum(1 for line in result.stdout.splitlines() if line.startswith("Station "))

    # -- internals ----------------------------------------------------------------

    def _refresh(self) -> None:
        """Learn the profile's state from NetworkManager; raises NmcliError."""
        argv = ["nmcli", "-t", "-f", "GENERAL.STATE,GENERAL.DEVICES"]
        argv += ["connection", "show", "id", self.connection]
        result = self._invoke("show", argv, self._timeout_s)
        if result.returncode != 0:
            if result.returncode == 10:
                self._on = False  # a profile that does not exist is not active
            raise self._failed(
                _NMCLI_EXIT_FAULTS.get(result.returncode, f"nmcli_exit_{result.returncode}"),
                f"nmcli connection show: {_last_line(result.stderr, result.stdout)}",
                switching=False,
            )
        try:
            state, device = _parse_active_state(result.stdout)
        except ValueError as exc:
            raise self._failed(
                "nmcli_unreadable", f"nmcli connection show: {exc}", switching=False
            ) from None
        if device is not None:
            self._device = device
        if state in ("activated", "deactivated"):
            self._confirmed(state == "activated")
        else:
            # activating / deactivating: not serving phones yet (or any more); look again soon.
            self._on = False
            self._known = False
            self._check_at = self._monotonic() + self._retry_min_s
        # An answer ends a streak of failed reads. A failed switch ends only with the state
        # that was asked for: the controller reads is_on before every retry, and that read
        # must neither reset the backoff nor log the same failure again.
        if not self._switch_failed or (self._known and self._on == self._wanted):
            self._recovered()

    def _switch(self, on: bool, timeout_s: float) -> None:
        """Start bench-hotspot@up|down and wait for its end (the unit is Type=oneshot)."""
        verb = "up" if on else "down"
        unit = HOTSPOT_SWITCH_UNIT.format(verb=verb)
        argv = ["systemctl", "--no-ask-password", "start", unit]
        result = self._invoke(verb, argv, timeout_s)
        if result.returncode == 0:
            self._confirmed(on)
            self._recovered()
            return
        fault, detail = self._switch_failure(unit, result)
        raise self._failed(fault, f"hotspot {verb} ({unit}): {detail}", switching=True)

    def _switch_failure(
        self, unit: str, result: subprocess.CompletedProcess[str]
    ) -> tuple[str, str]:
        """(fault, detail) for a failed `systemctl start`: denied, no unit, or nmcli's exit."""
        # systemctl's first line says what happened; the next ones point at its logs.
        said = next(
            (line.strip()[:200] for line in result.stderr.splitlines() if line.strip()),
            _last_line(result.stdout),
        )
        if "authentication required" in said.lower() or "access denied" in said.lower():
            # No polkit rule for us (deploy/polkit/50-bench-agent-hotspot.rules), or no polkit.
            return "not_authorized", f"{said} (is the polkit rule installed?)"
        if result.returncode == _SYSTEMCTL_UNIT_NOT_FOUND or "not found" in said:
            return "switch_unit_missing", f"{said} (run deploy/install.sh)"
        # The unit ran and failed: its main process's exit status is nmcli's (or the
        # switch's own 64/78). Read only after a failure, so a stale value cannot mislead.
        status = self._invoke(
            "status",
            ["systemctl", "show", "--property=ExecMainStatus", "--value", unit],
            self._timeout_s,
        )
        text = status.stdout.strip()
        code = int(text) if status.returncode == 0 and text.isdigit() else None
        journal = f"see journalctl -u {unit}"
        if code is None or code == 0:
            return f"systemctl_exit_{result.returncode}", f"{said}; {journal}"
        fault = _SWITCH_EXIT_FAULTS.get(code) or _NMCLI_EXIT_FAULTS.get(code, f"nmcli_exit_{code}")
        return fault, f"exit status {code} ({fault}); {journal}"

    def _invoke(
        self, what: str, argv: list[str], timeout_s: float
    ) -> subprocess.CompletedProcess[str]:
        switching = what != "show"
        program = argv[0]
        try:
            return _run_bounded(argv, timeout_s)
        except FileNotFoundError:
            raise self._failed(
                f"{program}_missing", f"{program} not found on PATH", switching
            ) from None
        except subprocess.TimeoutExpired:
            detail = f"{program} ({what}): no answer in {timeout_s:g} s, killed"
            raise self._failed(f"{program}_timeout", detail, switching) from None
        except OSError as exc:
            raise self._failed(
                f"{program}_not_runnable", f"{program} cannot run: {exc}", switching
            ) from None

    def _confirmed(self, on: bool) -> None:
        self._on = on
        self._known = True
        self._check_at = self._monotonic() + self._confirm_every_s

    def _recovered(self) -> None:
        if self.fault is not None:
            log.info(
                "hotspot %s: nmcli works again (after %s)",
                self.name,
                self.fault,
                extra={"output": self.name},
            )
        self.fault = None
        self._failures = 0
        self._retry_at = -math.inf
        self._switch_failed = False

    def _failed(self, fault: str, detail: str, switching: bool) -> NmcliError:
        """Record a failure (state unknown, backoff, fault) and return the error to raise."""
        self._known = False
        self._switch_failed = switching
        self._failures += 1
        delay = min(self._retry_min_s * 2 ** (self._failures - 1), self._retry_max_s)
        self._retry_at = self._monotonic() + delay
        self._check_at = -math.inf  # unknown now: read again as soon as the backoff allows
        if self.fault is None:  # once per streak, no traceback: nothing here is a bug of ours
            log.warning(
                "hotspot %s: %s; retrying in %.0f s, quiet until nmcli works again",
                self.name,
                detail,
                delay,
                extra={"output": self.name, "fault": fault},
            )
        else:
            log.debug("hotspot %s: still failing: %s", self.name, detail)
        self.fault = fault
        return NmcliError(fault, f"hotspot {self.name}: {detail}")

    def _iw_failed(self, detail: str) -> None:
        # Only the exit status: the tool's output may name stations (MAC addresses).
        if not self._iw_failing:
            log.warning(
                "hotspot %s: cannot count Wi-Fi clients (iw: %s)",
                self.name,
                detail,
                extra={"output": self.name},
            )
        self._iw_failing = True
