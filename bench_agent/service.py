"""The composition root and the main loop of the daemon (`bench-agent run`).

Threads (paho's network thread, gpiozero's callbacks, the charger reader, the
control socket) only put events on one queue; this loop is the one place that
decides and acts. Every interval is in agent seconds (`Clock`), so the same
loop runs a real bench and a simulated one that is sped up.

Constructors build; `run()` starts. One `ExitStack` owns every resource, so
every exit path the process controls puts the outputs in their safe state and
tells the broker the bench is offline.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field, fields, replace
from datetime import date, datetime
from types import FrameType
from typing import Any

from bench_agent import __version__, statefile
from bench_agent.clock import TimeFloor, iso_utc, read_boot_id
from bench_agent.config import Config, load_config
from bench_agent.errors import ConfigError, StorageError
from bench_agent.eventlog import EventLog
from bench_agent.faults import Fault, FaultRegistry, sensor_fault, thread_fault
from bench_agent.hardware.backend import build_hardware
from bench_agent.hardware.bundle import Hardware
from bench_agent.hardware.vedirect import ChargerSample, VEDirectReader
from bench_agent.link import payloads
from bench_agent.link.mqtt import (
    Acked,
    Connected,
    Disconnected,
    LinkEvent,
    MessageIn,
    MqttLink,
    Refused,
    SetupFailed,
    Will,
)
from bench_agent.link.outbox import Kind, Outbox, OutboxItem, OutboxStats
from bench_agent.link.publisher import Publisher
from bench_agent.local.control import ControlError, ControlServer, ControlSocketError
from bench_agent.local.control_api import LocalControl
from bench_agent.power import uplink
from bench_agent.power.controller import Controller
from bench_agent.power.counters import DailyCounters
from bench_agent.power.policy import Override
from bench_agent.power.sampler import Sampler
from bench_agent.power.soc import CHEMISTRIES, SocEstimator
from bench_agent.power.uplink import UplinkConfig, UplinkRecovery
from bench_agent.preflight import cleartext_password
from bench_agent.remote.commands import CommandProcessor, load_trusted_keys
from bench_agent.systemd import Notifier, WatchdogGate, progress_is_recent

log = logging.getLogger(__name__)

COUNTERS_FILE = "daily-counters.json"
# What SIGHUP applies live. The rest (hardware, outputs, MQTT, storage, ...) is
# built once at start: a change there is refused and needs a restart.
LIVE_RELOADABLE = frozenset({"policy", "commands", "uplink"})
UPLINK_FILE = "uplink-recovery.json"
TIME_FLOOR_FILE = "time-floor.json"
COUNTERS_SAVE_EVERY_S = 900.0  # agent seconds; a crash loses at most this much counting
WIFI_CLIENTS_EVERY_S = 60.0
MAX_PENDING_REPLIES = 256
# The broker refuses the bench's publishes (ACL, quota): records wait in the outbox.
BROKER_REFUSED_FAULT = Fault.BROKER_REFUSED
# Ops' key files that could not be used (skipped; commands signed with them refused).
OPS_KEYS_FAULT = Fault.OPS_KEYS
# The bench's own side of the uplink cannot be set up (TLS files): not the broker's fault.
MQTT_SETUP_FAULT = Fault.MQTT_SETUP
# Faults that Hardware.faults() owns: raised while present there, cleared when gone.
HARDWARE_FAULTS = frozenset({Fault.GPIO, Fault.I2C})
CONTROL_CLOSE_WAIT_S = 1.0
STOP_GRACE_S = 2.0
# The charge controller's fields that go into telemetry (units in the names).
CHARGER_FIELDS = (
    "battery_volts",
    "battery_amps",
    "panel_volts",
    "panel_watts",
    "charge_state",
    "mppt_mode",
    "error",
    "yield_today_kwh",
    "yield_yesterday_kwh",
    "yield_total_kwh",
    "max_power_today_w",
    "max_power_yesterday_w",
    "state_of_charge_pct",
    "model",
    "firmware",
    "serial_number",
)  # how long shutdown waits for the broker to acknowledge "offline"


@dataclass(frozen=True, slots=True)
class StopRequested:
    signal_name: str


@dataclass(frozen=True, slots=True)
class ReloadRequested:
    """SIGHUP: read the configuration file again."""


@dataclass(frozen=True, slots=True)
class TamperChanged:
    is_open: bool


@dataclass(frozen=True, slots=True)
class Call:
    """Run `fn` on the main loop (for the control socket) and hand back its result
    or the exception it raised, in `outcome` as ("ok", value) or ("error", exc)."""

    fn: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    outcome: list[tuple[str, Any]] = field(default_factory=list)


InboxItem = LinkEvent | StopRequested | ReloadRequested | TamperChanged | Call | ChargerSample


class Agent:
    """The bench agent. `Agent(cfg).run()` blocks until SIGTERM/SIGINT; returns the exit code."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.boot_id = read_boot_id()
        # SimpleQueue: its put() is reentrant, so the signal handlers may call it while
        # the main loop is inside get() (queue.Queue could deadlock on its lock).
        self.inbox: queue.SimpleQueue[InboxItem] = queue.SimpleQueue()
        self._stopping = False
        # Every source reports here; each change is an event, a raise also a state.
        self.faults = FaultRegistry(self._fault_changed)
        self.storage_errors = 0
        self.tamper_open: bool | None = None
        self._last_counted_mono: float | None = None
        self._counters_saved_mono: float | None = None
        self._reported_yesterday: date | None = None
        self._wifi_clients: int | None = None
        # Bounded: a flood of commands cannot grow memory; the oldest reply goes first.
        self._pending_replies: deque[bytes] = deque(maxlen=MAX_PENDING_REPLIES)
        self.replies_dropped = 0
        self._next_clients_query_mono = float("-inf")
        # Built in run(), inside the ExitStack that will close them.
        self.hardware: Hardware
        self.sampler: Sampler
        self.outbox: Outbox
        self.link: MqttLink
        self.publisher: Publisher
        self.control_server: ControlServer | None = None
        self._key_problems: str | None = None  # the bad ops key files, for the fault

    # -- wiring -----------------------------------------------------------------

    def run(self, ready: Callable[[], None] | None = None) -> int:
        trusted_keys = self._trusted_keys(self.cfg)
        with ExitStack() as stack:
            self._install_signal_handlers(stack)
            self.notifier = stack.enter_context(Notifier())
            # systemd's watchdog runs in real time, whatever the simulated clock does.
            self.watchdog = WatchdogGate(self.notifier, self.notifier.watchdog_interval_s())
            self._last_sample_real = time.monotonic()
            self.hardware = stack.enter_context(
                build_hardware(
                    self.cfg, on_tamper=lambda is_open: self.inbox.put(TamperChanged(is_open))
                )
            )
            self.clock = self.hardware.clock
            # What time has certainly passed, across reboots (commands' age while unsynced).
            self.time_floor = TimeFloor(
                self.cfg.storage.dir / TIME_FLOOR_FILE, monotonic=self.clock.monotonic
            )
            stack.callback(self.time_floor.save)
            self.boot_id = self.hardware.boot_id or self.boot_id
            # Whether this run has seen the clock synced / not synced (see
            # _follow_clock_sync: the first sample on a synced clock corrects too).
            self._clock_synced = False
            self._seen_unsynced = False
            self.sampler = Sampler(
                self.hardware.channels,
                self.cfg.sampling.sample_interval_s,
                on_fault=self._channel_fault,
            )
            self.cfg.storage.dir.mkdir(parents=True, exist_ok=True)
            self.events = EventLog(self.cfg.storage.dir / "events.jsonl")
            self.outbox = stack.enter_context(
                Outbox(
                    self.cfg.storage.dir / "outbox.sqlite3",
                    max_bytes=self.cfg.storage.outbox_max_bytes,
                    max_age_s=self.cfg.storage.outbox_max_age_s,
                )
            )
            self.link = MqttLink(
                self.cfg.mqtt,
                will=Will(
                    self.cfg.topic("status"), self._status(online=False, reason="connection_lost")
                ),
                subscriptions=[self.cfg.topic("cmd")],
                on_event=self.inbox.put,
            )
            self.publisher = Publisher(
                self.outbox,
                self.link,
                bench_id=self.cfg.bench.id,
                topic=self.cfg.topic,
                max_payload_bytes=self.cfg.storage.max_payload_bytes,
                now=self.clock.monotonic,
            )
            self.controller = Controller(
                self.cfg.policy,
                self.hardware.outputs,
                SocEstimator(
                    self.cfg.battery.capacity_ah,
                    CHEMISTRIES[self.cfg.battery.chemistry],
                    rest_current_c=self.cfg.battery.rest_current_c,
                    resistance_ohm=self.cfg.battery.internal_resistance_ohm,
                ),
                emit_event=self.emit_event,
                state_file=self.cfg.storage.dir / "controller-state.json",
                battery_channel=self.cfg.battery.channel,
            )
            self.controller.load(self.clock.monotonic())
            stack.callback(self.controller.save)
            self.counters = self._load_counters()
            stack.callback(self._save_counters)
            self.uplink = self._load_uplink()
            stack.callback(
                lambda: statefile.write_json(
                    self.cfg.storage.dir / UPLINK_FILE, self.uplink.to_dict(self.clock.monotonic())
                )
            )
            self._override_before_cycle: Override | None = None
            self._uplink_cfg_pending: UplinkConfig | None = None
            self._published_state_version = -1
            if (cleartext := cleartext_password(self.cfg.mqtt)) is not None:
                log.warning("SECURITY: %s", cleartext.message)
            self.commands = CommandProcessor(
                AgentCommands(self),
                bench_id=self.cfg.bench.id,
                trusted_keys=trusted_keys,
                allow_unsigned=self.cfg.commands.allow_unsigned,
                replay_store_path=self.cfg.storage.dir / "commands-seen.jsonl",
                clock_synced=self.clock.synced,
                wall_now=self.clock.wall,
                on_event=lambda event: self.emit_event(event.pop("type"), event),
                max_age_s=self.cfg.commands.max_age_s,
                time_floor=self.time_floor,
            )
            self._report_start_faults()
            self.tamper_open = self.hardware.tamper_open()
            self.charger_reading: ChargerSample | None = None
            self.charger: VEDirectReader | None = None
            if self.cfg.charger is not None:
                self.charger = stack.enter_context(
                    VEDirectReader(
                        str(self.cfg.charger.port),
                        self.inbox.put,
                        baudrate=self.cfg.charger.baudrate,
                    )
                )  # entering the context starts the reader thread
            self.link.start()
            stack.callback(self._say_offline)
            # Runs before _say_offline (LIFO): the switches to the safe state are
            # events and a state update that still reach the broker.
            stack.callback(self._enter_safe_state)
            self.started_mono = self.link_changed_mono = self.clock.monotonic()
            # Closed first on the way out (LIFO): no technician request reaches a
            # loop that has stopped.
            self._start_control_socket(stack)
            # Ready once config and hardware are up; the broker may be down for days.
            self.notifier.ready()
            if ready is not None:
                ready()
            log.info("bench %s running (%s backend)", self.cfg.bench.id, self.cfg.hardware.backend)
            self._loop()
        return 0

    def _start_control_socket(self, stack: ExitStack) -> None:
        """The technician's socket. If it cannot be served (another agent holds it, a
        bad group) the bench goes on without it: telemetry matters more, and the
        fault tells ops."""
        self.control_server = self._serve_control_socket()
        # Whichever server runs at the stop (it may have been restarted). A request
        # still waiting for the loop gets "busy" from its own timeout; the stop does
        # not wait for it longer than this.
        stack.callback(self._close_control_socket)

    def _close_control_socket(self) -> None:
        if self.control_server is not None:
            self.control_server.close(CONTROL_CLOSE_WAIT_S)

    def _serve_control_socket(self) -> ControlServer | None:
        server = ControlServer(
            self.cfg.control.socket,
            LocalControl(self).handle,
            group=self.cfg.control.group,
        )
        try:
            server.start()
        except (OSError, ControlSocketError) as exc:
            log.error("control socket %s not served: %s", self.cfg.control.socket, exc)
            self.faults.raise_(Fault.CONTROL_SOCKET, str(exc)[:200])
            return None
        return server

    def _restart_control_socket(self) -> bool:
        """The socket's thread ended: serve a new one (the technician's CLI must work)."""
        fault = thread_fault("control_socket")
        self.faults.raise_(fault, "ended unexpectedly; restarting it")
        old, self.control_server = self.control_server, None
        if old is not None:
            with contextlib.suppress(Exception):
                old.close(0)
        self.control_server = self._serve_control_socket()
        if self.control_server is None:
            return False
        log.warning("control socket restarted")
        self.faults.clear(fault)
        return True

    def _install_signal_handlers(self, stack: ExitStack) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, _frame: FrameType | None) -> None:
            self.inbox.put(StopRequested(signal.Signals(signum).name))

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.signal(sig, handler)
            stack.callback(signal.signal, sig, previous)
        previous = signal.signal(signal.SIGHUP, lambda *_: self.inbox.put(ReloadRequested()))
        stack.callback(signal.signal, signal.SIGHUP, previous)

    def request_stop(self) -> None:
        self.inbox.put(StopRequested("request"))

    def run_on_loop(self, fn: Callable[[], Any], timeout_s: float) -> Any:
        """From another thread: run `fn` on the main loop, wait at most `timeout_s`.

        Raises ControlError "busy" when the loop does not answer in time (the call
        may still run later), and re-raises what `fn` raised.
        """
        if self._stopping:
            raise ControlError("stopping", "the agent is stopping")
        call = Call(fn)
        self.inbox.put(call)
        if not call.done.wait(timeout_s):
            raise ControlError("busy", f"the agent did not answer within {timeout_s:g} s")
        kind, value = call.outcome[0]
        if kind == "error":
            raise value
        return value

    # -- the loop -----------------------------------------------------------

    def _loop(self) -> None:
        sample_every = self.cfg.sampling.sample_interval_s
        publish_every = self.cfg.sampling.publish_interval_s
        now = self.clock.monotonic()
        next_sample = now
        next_publish = now + publish_every
        while not self._stopping:
            now = self.clock.monotonic()
            if now >= next_sample:
                self._sample(now)
                # Skip missed ticks instead of bursting to catch up after a stall.
                next_sample += sample_every * max(1, int((now - next_sample) // sample_every) + 1)
            if now >= next_publish:
                self._record_telemetry(now, publish_every)
                next_publish += publish_every * max(
                    1, int((now - next_publish) // publish_every) + 1
                )
            real_now = time.monotonic()
            healthy = (
                progress_is_recent(
                    real_now, self._last_sample_real, max(self.clock.to_real_s(sample_every), 1.0)
                )
                and not self._dead_threads()
            )
            self.watchdog.tick(real_now, healthy)
            wait_s = self.clock.to_real_s(min(next_sample, next_publish) - self.clock.monotonic())
            ping_due = self.watchdog.seconds_until_due(real_now)
            if ping_due is not None:
                wait_s = min(wait_s, ping_due)
            self._drain_inbox(max(wait_s, 0.0))

    def _drain_inbox(self, timeout_s: float) -> None:
        """Handle queued events; wait up to `timeout_s` for the first one."""
        try:
            item = self.inbox.get(timeout=timeout_s) if timeout_s > 0 else self.inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(item)
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                break
        self._send_replies()
        try:
            self.publisher.pump()
        except StorageError as exc:  # a read error: the backlog waits, the loop goes on
            self._storage_failed(exc)

    def _queue_reply(self, reply: bytes) -> None:
        if len(self._pending_replies) == MAX_PENDING_REPLIES:
            self.replies_dropped += 1
            if self.replies_dropped % 100 == 1:  # a flood: say so, but not per reply
                log.warning("command replies dropped: %d so far", self.replies_dropped)
        self._pending_replies.append(reply)
        self._send_replies()

    def _send_replies(self) -> None:
        """Command replies waiting for room in paho's bounded queue (a burst of commands
        on a slow link) or for the link; sent in order, ahead of the backlog."""
        while self._pending_replies:
            if self.link.publish(self.cfg.topic("cmd/reply"), self._pending_replies[0]) is None:
                return
            self._pending_replies.popleft()

    def _handle(self, item: InboxItem) -> None:
        match item:
            case Acked() | Refused() | Connected() | Disconnected() | SetupFailed():
                self._handle_link(item)
            case MessageIn(topic, payload, retained):
                if topic == self.cfg.topic("cmd"):
                    reply = self.commands.handle_mqtt(payload, retained=retained)
                    if reply is not None:
                        self._queue_reply(reply)
            case TamperChanged(is_open):
                self._tamper_changed(is_open)
            case ReloadRequested():
                self._reload_config()
            case StopRequested(name):
                log.info("stopping (%s)", name)
                self.notifier.stopping()
                self._stopping = True
            case ChargerSample():
                self.charger_reading = item
                self._take_bmv_soc(item)
            case Call():
                self._run_call(item)

    def _handle_link(self, item: LinkEvent) -> None:
        """What the MQTT session reports: acks and refusals, the connection, set-up."""
        match item:
            case Acked(generation, mid):
                self.publisher.on_acked(generation, mid)
                if self.publisher.refused_reason is None:
                    self.faults.clear(BROKER_REFUSED_FAULT)
            case Refused(generation, mid, reason):
                self.publisher.on_refused(generation, mid, reason)
                self.faults.raise_(BROKER_REFUSED_FAULT, reason)
            case Connected(generation, max_packet_size):
                self.link_changed_mono = self.clock.monotonic()
                self.link.publish(self.cfg.topic("status"), self._status(online=True), retain=True)
                self._publish_state(force=True)
                self.publisher.on_connected(generation, max_packet_size)
                self._report_drops()
            case Disconnected():
                self.link_changed_mono = self.clock.monotonic()
                self.publisher.on_disconnected()
            case SetupFailed(detail):
                self.faults.set(MQTT_SETUP_FAULT, None if detail is None else detail[:300])

    def _dead_threads(self) -> list[str]:
        """The agent's threads that ended although nobody stopped them, each a fault.

        The control socket is served again at once. Any other dead thread is not
        restarted here: its fault reaches ops, and the withheld watchdog pings make
        systemd restart the whole agent (WatchdogSec), which brings every part back
        in a known state.
        """
        threads = {"mqtt": self.link.alive()}
        if self.charger is not None:
            threads["charger"] = self.charger.is_alive
        if self.control_server is not None and not self.control_server.alive():
            # The technician's socket is restarted at once; only if that fails does
            # the watchdog restart the agent.
            threads["control_socket"] = self._restart_control_socket()
        dead = [name for name, alive in threads.items() if not alive]
        for name in dead:
            if thread_fault(name) not in self.faults:
                log.error("thread %s ended unexpectedly: watchdog pings withheld", name)
            self.faults.raise_(thread_fault(name), "ended unexpectedly; the agent will restart")
        return dead

    def _tamper_changed(self, is_open: bool) -> None:
        if is_open != self.tamper_open:
            self.tamper_open = is_open
            self.emit_event("tamper", {"open": is_open})
            self._publish_state(force=True)

    def _reload_config(self) -> None:
        """SIGHUP: apply what can change live (policy thresholds and schedules, ops
        keys and command limits, uplink recovery); anything else needs a restart,
        and a broken file changes nothing. Each outcome is an event."""
        try:
            new = load_config(self.cfg.source)
        except ConfigError as exc:
            log.error("configuration not reloaded: %s", exc)
            self.emit_event("config_reload_refused", {"reason": "invalid", "detail": str(exc)})
            return
        changed = sorted(
            f.name
            for f in fields(Config)
            if f.name != "source" and getattr(new, f.name) != getattr(self.cfg, f.name)
        )
        needs_restart = [name for name in changed if name not in LIVE_RELOADABLE]
        if needs_restart:
            log.error(
                "configuration not reloaded: [%s] changed, which needs a restart "
                "(systemctl restart bench-agent)",
                "], [".join(needs_restart),
            )
            self.emit_event(
                "config_reload_refused", {"reason": "needs_restart", "tables": needs_restart}
            )
            return
        try:
            trusted_keys = self._trusted_keys(new)  # a bad key file is skipped, a fault
        except OSError as exc:  # the directory itself cannot be read
            log.error("configuration not reloaded: %s", exc)
            self.emit_event("config_reload_refused", {"reason": "invalid", "detail": str(exc)})
            return
        self.faults.set(OPS_KEYS_FAULT, self._key_problems)
        self.controller.policy = new.policy
        self.commands.reconfigure(
            trusted_keys=trusted_keys,
            allow_unsigned=new.commands.allow_unsigned,
            max_age_s=new.commands.max_age_s,
        )
        if new.uplink != self.cfg.uplink:
            # Rebuilt from its saved form, which would end a power-cycle in progress
            # without its power_on: during a hold the new settings wait for it.
            self._uplink_cfg_pending = new.uplink
            if not self.uplink.holding_off:
                self._apply_pending_uplink_cfg()
        self.cfg = new
        log.info("configuration reloaded: %s", ", ".join(changed) or "ops keys only")
        self.emit_event("config_reloaded", {"tables": changed})
        self._publish_state(force=True)

    def _trusted_keys(self, cfg: Config) -> dict[str, Any]:
        """Ops' keys. A bad key file is skipped (commands signed with it are refused)
        and is the `ops_keys` fault: one flawed key pushed to a fleet must not stop
        every bench (exit 78 is never restarted)."""
        bad: list[str] = []
        keys = (
            load_trusted_keys(cfg.commands.trusted_keys, on_bad_key=lambda e: bad.append(str(e)))
            if cfg.commands.trusted_keys.is_dir()
            else {}
        )
        for problem in bad:
            log.error("ops key skipped: %s", problem)
        self._key_problems = "; ".join(bad)[:500] or None
        if not keys:
            log.warning(
                "no trusted ops keys in %s: signed commands will be refused",
                cfg.commands.trusted_keys,
            )
        return dict(keys)

    @staticmethod
    def _run_call(call: Call) -> None:
        try:
            call.outcome.append(("ok", call.fn()))
        except Exception as exc:  # handed to the caller's thread, never kills the loop
            call.outcome.append(("error", exc))
        finally:
            call.done.set()

    # -- sampling and recording ----------------------------------------------

    def _sample(self, mono_s: float) -> None:
        self.hardware.tick()
        self._sync_hardware_faults()
        readings = self.sampler.sample(mono_s)
        self._last_sample_real = time.monotonic()
        self._follow_clock_sync()
        local_now = self.clock.wall().astimezone(self.cfg.tz)
        # What the outputs were during the interval that just ended, for the counters.
        # An output that cannot be driven (unknown) counts as off: a floating pin is off.
        outputs_on = {name: bool(switch.is_on) for name, switch in self.hardware.outputs.items()}
        self._recover_uplink(mono_s, local_now.date())
        self.controller.step(local_now, mono_s, readings, cpu_c=self.hardware.cpu_temperature())
        self._count(local_now, mono_s, readings, outputs_on)
        self._publish_state()

    # -- uplink recovery ------------------------------------------------------

    def _load_uplink(self) -> UplinkRecovery:
        saved = statefile.read_text(self.cfg.storage.dir / UPLINK_FILE)
        recovery, problem = UplinkRecovery.restore(self.cfg.uplink, saved, self.clock.monotonic())
        if problem is not None:
            log.warning("uplink recovery: %s", problem)
        return recovery

    def _recover_uplink(self, mono_s: float, today: date) -> None:
        """Power-cycle the router/AP output when the broker has been unreachable too
        long (uplink.py decides when); before the policy runs, so its hold applies now."""
        cfg = self.cfg.uplink
        switch = self.hardware.outputs.get(cfg.output)
        if not cfg.enabled or switch is None:
            return
        action = self.uplink.step(mono_s, today, self.link.connected, bool(switch.is_on))
        if action is None:
            return
        self.emit_event(uplink.EVENT_TYPE, action.event())
        overrides = self.controller.overrides
        if action.kind == "power_off":
            # A technician's override on that output comes back after the cycle.
            self._override_before_cycle = overrides.get(action.output)
            self.controller.set_override(
                action.output, False, action.hold_off_s, uplink.OVERRIDE_SOURCE, mono_s
            )
        elif action.kind == "power_on":
            held = overrides.get(action.output)
            if held is not None and held.source == uplink.OVERRIDE_SOURCE:
                self.controller.set_override(action.output, None, None, held.source, mono_s)
                self._restore_override(action.output, mono_s)
            else:
                # Someone chose anew during the hold (an override, or auto): theirs stands.
                self._override_before_cycle = None
            self._apply_pending_uplink_cfg()
        statefile.write_json(self.cfg.storage.dir / UPLINK_FILE, self.uplink.to_dict(mono_s))
        self._publish_state(force=True)

    def _apply_pending_uplink_cfg(self) -> None:
        pending, self._uplink_cfg_pending = self._uplink_cfg_pending, None
        if pending is not None:
            now = self.clock.monotonic()
            self.uplink = UplinkRecovery.from_dict(pending, self.uplink.to_dict(now), now)

    def _restore_override(self, output: str, mono_s: float) -> None:
        before, self._override_before_cycle = self._override_before_cycle, None
        if before is None or before.state is None:
            return
        remaining = None if before.expires_mono_s is None else before.expires_mono_s - mono_s
        if remaining is None or remaining > 0:
            self.controller.set_override(output, before.state, remaining, before.source, mono_s)

    # -- daily counters -------------------------------------------------------

    def _load_counters(self) -> DailyCounters:
        today = self.clock.wall().astimezone(self.cfg.tz).date()
        saved = statefile.read_text(self.cfg.storage.dir / COUNTERS_FILE)
        counters, problem = DailyCounters.restore(self.cfg.counters, saved, today)
        if problem is not None:
            log.warning("daily counters start at zero: %s", problem)
        return counters

    def _save_counters(self) -> None:
        statefile.write_json(self.cfg.storage.dir / COUNTERS_FILE, self.counters.to_dict())

    def _count(
        self,
        local_now: datetime,
        mono_s: float,
        readings: Mapping[str, Any],
        outputs_on: Mapping[str, bool],
    ) -> None:
        # A stalled loop is not extrapolated: a sample stands for at most 3 intervals.
        dt_s = 0.0
        if self._last_counted_mono is not None:
            dt_s = min(mono_s - self._last_counted_mono, 3 * self.cfg.sampling.sample_interval_s)
        self._last_counted_mono = mono_s
        if mono_s >= self._next_clients_query_mono:
            # Asking the radio costs a subprocess: once a minute is plenty for a daily max.
            self._wifi_clients = self.hardware.wifi_clients()
            self._next_clients_query_mono = mono_s + WIFI_CLIENTS_EVERY_S
        self.counters.add_sample(local_now, dt_s, readings, outputs_on, self._wifi_clients)
        if self._counters_saved_mono is None:
            self._counters_saved_mono = mono_s
        elif mono_s - self._counters_saved_mono >= COUNTERS_SAVE_EVERY_S:
            self._save_counters()
            self._counters_saved_mono = mono_s

    def today(self) -> dict[str, Any]:
        """Today's counters, as in telemetry and the technician's status."""
        return self.counters.day_payload(self.counters.today)

    def _counters_for_telemetry(self) -> dict[str, Any]:
        """`today`, and `yesterday` once, in the first record after local midnight."""
        body = {"today": self.today()}
        yesterday = self.counters.yesterday
        if yesterday is not None and yesterday.day != self._reported_yesterday:
            body["yesterday"] = self.counters.day_payload(yesterday)
            self._reported_yesterday = yesterday.day
        return body

    def _publish_state(self, *, force: bool = False) -> None:
        """The retained `state`: published on connect and whenever it changes."""
        version = self.controller.state_version
        if not force and version == self._published_state_version:
            return
        payload = {
            "v": payloads.CONTRACT_VERSION,
            "bench": self.cfg.bench.id,
            "ts": iso_utc(self.clock.wall()),
            **self.controller.state_payload(self.clock.monotonic()),
            "tamper_open": self.tamper_open,
            "faults": self.faults.as_list(),
        }
        if self.link.publish(self.cfg.topic("state"), payloads.encode(payload), retain=True):
            self._published_state_version = version

    def _follow_clock_sync(self) -> None:
        """Once the wall clock is synced -- it became so, or already was when this run
        started -- records of this boot still stored with an unsynced time get it
        corrected from their monotonic time (an earlier run of the same boot may have
        left some). `clock_synced` says so when it was a change or corrected any."""
        synced = self.clock.synced()
        if synced:  # saved at most hourly, and at the stop
            self.time_floor.observe(self.clock.wall().timestamp(), save_now=False)
        if synced and not self._clock_synced:
            wall_minus_mono_s = self.clock.wall().timestamp() - self.clock.monotonic()
            try:
                corrected = self.outbox.correct_timestamps(self.boot_id, wall_minus_mono_s)
            except StorageError as exc:
                self._storage_failed(exc)
                return  # tried again at the next sample
            self._clock_synced = True
            if corrected or self._seen_unsynced:
                log.info("clock synced: %d stored records got corrected timestamps", corrected)
                self.emit_event("clock_synced", {"corrected_records": corrected})
        elif not synced:
            if self._clock_synced:
                log.warning("clock no longer synced: records are flagged unsynced")
            self._clock_synced = False
            self._seen_unsynced = True

    def _purge_expired(self, mono_s: float) -> None:
        try:
            self.outbox.purge_expired(self.boot_id, mono_s, in_flight=self.publisher.inflight_seqs)
        except StorageError as exc:
            self._storage_failed(exc)

    def _storage_failed(self, exc: StorageError) -> None:
        self.storage_errors += 1
        self.faults.raise_(Fault.STORAGE, self.outbox.fault or str(exc))

    def _record_telemetry(self, mono_s: float, interval_s: float) -> None:
        self._purge_expired(mono_s)
        body: dict[str, Any] = {
            "interval_s": interval_s,
            "channels": self.sampler.close_interval(),
            "outputs": {name: sw.is_on for name, sw in self.hardware.outputs.items()},
            "battery": self.controller.state_payload(mono_s)["battery"],
            "tamper_open": self.tamper_open,
            "cpu_temp_c": self.hardware.cpu_temperature(),
            "charger": self._charger_for_telemetry(),
            "faults": sorted(self.faults),
            "health": self.health(mono_s),
            **self._counters_for_telemetry(),
        }
        self._record("telemetry", body, mono_s)
        health = body["health"]
        link = "up" if self.link.connected else "down"
        self.notifier.status(
            f"broker {link}; outbox {health['outbox_depth']}; faults {len(self.faults)}"
        )

    def _charger_for_telemetry(self) -> dict[str, Any] | None:
        """The charger summary; raises or clears the stale fault on the way."""
        if self.charger is None or self.cfg.charger is None:
            return None
        if self.charger_stale():
            why = self.charger.open_error
            self.faults.raise_(Fault.CHARGER, "no_valid_block" + (f": {why}" if why else ""))
        else:
            self.faults.clear(Fault.CHARGER)
        return self.charger_summary()

    def _take_bmv_soc(self, sample: ChargerSample) -> None:
        """A BMV battery monitor's own state of charge outranks our estimate (a
        charge controller sends none)."""
        soc_pct = sample.reading.state_of_charge_pct
        if soc_pct is None:
            return
        try:
            self.controller.soc.from_bmv(soc_pct)
        except ValueError as exc:  # out of range: a garbled block that passed its checksum
            log.warning("battery monitor: state of charge ignored: %s", exc)

    def charger_stale(self) -> bool:
        """No valid block for `stale_after_s` (a reader just started has that much grace)."""
        if self.charger is None or self.cfg.charger is None:
            return False
        return self.charger.is_stale(time.monotonic(), self.cfg.charger.stale_after_s)

    def charger_summary(self) -> dict[str, Any] | None:
        """The charge controller's latest valid reading, or None (none yet, or stale)."""
        if self.charger_reading is None or self.charger_stale():
            return None
        reading = self.charger_reading.reading
        fields = {name: getattr(reading, name) for name in CHARGER_FIELDS}
        # JSON has no infinity: a BMV's "time to go: infinite" is sent as null.
        summary: dict[str, Any] = {
            k: (None if isinstance(v, float) and v == float("inf") else v)
            for k, v in fields.items()
        }
        # Values refused since the start (garbage, out of physical range): sent as null.
        summary["bad_fields"] = self.charger.stats.value_errors if self.charger else 0
        return summary

    def health(self, mono_s: float) -> dict[str, Any]:
        stats = self.outbox.stats()
        last_ack = self.publisher.last_ack_mono
        return {
            "reconnects": self.link.reconnects,
            "sensor_errors": self.sampler.errors_total(),
            "storage_errors": self.storage_errors,
            "outbox_depth": stats.depth,
            "outbox_drops": stats.drops_total,
            "outbox_oldest_age_s": self._oldest_age_s(stats, mono_s),
            "last_publish_age_s": None if last_ack is None else round(mono_s - last_ack, 1),
        }

    def _oldest_age_s(self, stats: OutboxStats, mono_s: float) -> float | None:
        """Age of the oldest waiting record: boot-relative when it is of this boot,
        else from its wall time when both it and the clock can be trusted."""
        if stats.oldest_mono_s is None:
            return None
        if stats.oldest_boot_id == self.boot_id:
            return round(max(0.0, mono_s - stats.oldest_mono_s), 1)
        try:
            oldest = self.outbox.oldest(1, 1 << 30)
        except StorageError:
            return None
        if not oldest or oldest[0].time_quality == "unsynced" or not self.clock.synced():
            return None
        recorded = datetime.fromisoformat(oldest[0].ts)
        return round(max(0.0, (self.clock.wall() - recorded).total_seconds()), 1)

    def emit_event(self, event_type: str, data: dict[str, Any]) -> None:
        """Record an event (committed at once), publish it ahead of any backlog, and
        keep it in the bench's own history for `bench-agent events`."""
        item, stored = self._record("event", {"type": event_type, **data}, self.clock.monotonic())
        self.events.append(payloads.record(item, historical=False, stored=stored))

    def _record(self, kind: Kind, body: dict[str, Any], mono_s: float) -> tuple[OutboxItem, bool]:
        """Store first, then publish live. When the disk refuses, the record still goes
        out live, once, without a seq (`stored: false`) and the storage fault is raised.
        Returns the record and whether it was stored."""
        quality = "synced" if self.clock.synced() else "unsynced"
        # Encoded once, for the store and the wire; the seq comes from the commit.
        item = OutboxItem.of(
            0,
            kind,
            body,
            boot_id=self.boot_id,
            mono_s=mono_s,
            ts=iso_utc(self.clock.wall()),
            time_quality=quality,
        )
        try:
            seq = self.outbox.put(
                kind,
                item.body_json,
                boot_id=item.boot_id,
                mono_s=mono_s,
                ts=item.ts,
                time_quality=quality,
                in_flight=self.publisher.inflight_seqs,
            )
        except StorageError as exc:
            self.publisher.send_unstored(item)
            self._storage_failed(exc)
            return item, False
        item = replace(item, seq=seq, seq_epoch=self.outbox.seq_epoch)
        self.publisher.send_live(item)
        if kind == "telemetry":
            self.faults.clear(Fault.STORAGE)
        self._report_drops()
        return item, True

    def _report_drops(self) -> None:
        """One `outbox_dropped` event per outage, sent once the broker is back: an
        event stored while offline would itself be dropped by the full outbox."""
        if not self.link.connected:
            return
        if dropped := self.outbox.take_new_drops():
            # The drops are already counted (health.outbox_drops); this says when,
            # and `total` makes the latest event authoritative on its own.
            total = self.outbox.stats().drops_total
            self.emit_event("outbox_dropped", {"records": dropped, "total": total})

    # -- faults -------------------------------------------------------------

    def _report_start_faults(self) -> None:
        """What was found wrong while building the parts, before the first sample."""
        if self.outbox.fault:
            self.faults.raise_(Fault.STORAGE, self.outbox.fault)
        self.faults.set(OPS_KEYS_FAULT, self._key_problems)
        # Remote commands are refused until a restart: ops and the self-test must know.
        self.faults.set(Fault.REPLAY_STORE, self.commands.fault)

    def _sync_hardware_faults(self) -> None:
        """Raise or clear the faults of bench parts that cannot be used (GPIO…)."""
        self.faults.sync(HARDWARE_FAULTS, self.hardware.faults())

    def _channel_fault(self, channel: str, code: str | None) -> None:
        self.faults.set(sensor_fault(channel), code)

    def _fault_changed(self, kind: str, data: dict[str, Any]) -> None:
        self.emit_event(kind, data)
        if kind == "fault_raised":
            self._publish_state(force=True)

    # -- status ---------------------------------------------------------------

    def _status(self, *, online: bool, reason: str | None = None) -> bytes:
        return payloads.status_message(
            self.cfg.bench.id,
            online=online,
            boot_id=self.boot_id,
            ts=iso_utc(self.clock.wall()),
            version=__version__,
            reason=reason,
        )

    def _enter_safe_state(self) -> None:
        self.controller.enter_safe_state("agent stopping")
        self._publish_state(force=True)

    def _say_offline(self) -> None:
        """Clean shutdown: retained status offline, acknowledged if the broker is there."""
        mid = self.link.publish(
            self.cfg.topic("status"), self._status(online=False, reason="shutdown"), retain=True
        )
        if mid is not None:
            self._wait_for_ack(mid, STOP_GRACE_S)
        self.link.close()

    def _wait_for_ack(self, mid: int, timeout_s: float) -> None:
        """Wait (bounded) for the broker's PUBACK of `mid`; other events are dropped: we stop."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = self.inbox.get(timeout=left)
            except queue.Empty:
                return
            if isinstance(item, Acked) and item.mid == mid:
                return


class AgentCommands:
    """What remote and local commands may do to the agent (commands.AgentControl)."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def state(self) -> dict[str, Any]:
        agent = self._agent
        return {
            **agent.controller.state_payload(agent.clock.monotonic()),
            "tamper_open": agent.tamper_open,
            "faults": agent.faults.as_list(),
        }

    def set_override(
        self, output: str, state: bool | None, duration_s: float | None, source: str
    ) -> str | None:
        agent = self._agent
        refusal = agent.controller.set_override(
            output, state, duration_s, source, agent.clock.monotonic()
        )
        if refusal is None:
            agent._publish_state(force=True)
        return refusal

    def reset_fault(self, name: str | None) -> list[str]:
        port = None if name is None else name.removeprefix("overcurrent.")
        reset = self._agent.controller.reset_fault(port)
        self._agent._publish_state(force=True)
        return [f"overcurrent.{p}" for p in reset]

    def rebirth(self) -> None:
        agent = self._agent
        agent.link.publish(agent.cfg.topic("status"), agent._status(online=True), retain=True)
        agent._publish_state(force=True)

    def outputs(self) -> list[str]:
        return list(self._agent.hardware.outputs)
