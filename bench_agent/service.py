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

import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from types import FrameType
from typing import Any

from bench_agent.clock import TimeFloor, read_boot_id
from bench_agent.config import Config
from bench_agent.config_loader import load_config
from bench_agent.errors import ConfigError, StorageError
from bench_agent.eventlog import EventLog
from bench_agent.faults import Fault, FaultRegistry, sensor_fault, thread_fault
from bench_agent.hardware.backend import build_hardware
from bench_agent.hardware.bundle import Hardware
from bench_agent.hardware.vedirect.reader import ChargerSample, VEDirectReader
from bench_agent.inbox import Call, InboxItem, ReloadRequested, StopRequested, TamperChanged
from bench_agent.link.clock_sync import ClockSyncCorrector
from bench_agent.link.health import HealthReport
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
from bench_agent.link.outbox import Outbox
from bench_agent.link.publisher import Publisher
from bench_agent.link.recorder import Recorder, ReplyQueue
from bench_agent.link.state import StatePublisher, status_message
from bench_agent.local.control import ControlError
from bench_agent.local.control_api import LocalControl
from bench_agent.local.control_service import ControlSocketService
from bench_agent.power.charger_feed import ChargerFeed
from bench_agent.power.controller import Controller
from bench_agent.power.counter_keeper import CounterKeeper
from bench_agent.power.sampler import Sampler
from bench_agent.power.soc import CHEMISTRIES, SocEstimator
from bench_agent.power.uplink_supervisor import UplinkSupervisor
from bench_agent.preflight import cleartext_password
from bench_agent.reload import reload_plan
from bench_agent.remote.agent_control import AgentCommands
from bench_agent.remote.ops_keys import load_ops_keys
from bench_agent.remote.processor import CommandProcessor
from bench_agent.systemd import Notifier, WatchdogGate, progress_is_recent
from bench_agent.vocabulary import EventType

log = logging.getLogger(__name__)

# Small state files in [storage] dir, next to the outbox.
COUNTERS_FILE = "daily-counters.json"
UPLINK_FILE = "uplink-recovery.json"
TIME_FLOOR_FILE = "time-floor.json"
# Faults that Hardware.faults() owns: raised while present there, cleared when gone.
HARDWARE_FAULTS = frozenset({Fault.GPIO, Fault.I2C})
STOP_GRACE_S = 2.0  # how long shutdown waits for the broker to acknowledge "offline"


class Agent:
    """The bench agent. `Agent(cfg).run()` blocks until SIGTERM/SIGINT; returns the exit code.

    `run()` builds every part inside one ExitStack and runs the loop; the parts
    do the work (power/, link/, local/, remote/). What stays here is the order
    of a sample, the routing of what the inbox receives, and the reload.
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.boot_id = read_boot_id()
        # SimpleQueue: its put() is reentrant, so the signal handlers may call it while
        # the main loop is inside get() (queue.Queue could deadlock on its lock).
        self.inbox: queue.SimpleQueue[InboxItem] = queue.SimpleQueue()
        self._stopping = False
        # Every source reports here; each change is an event, a raise also a state.
        self.faults = FaultRegistry(self._fault_changed)
        self.tamper_open: bool | None = None
        # Built in run(), inside the ExitStack that will close them.
        self.hardware: Hardware
        self.sampler: Sampler
        self.outbox: Outbox
        self.link: MqttLink
        self.publisher: Publisher
        self.recorder: Recorder
        self.state: StatePublisher
        self.charger: ChargerFeed | None = None

    # -- wiring -----------------------------------------------------------------

    def run(self, ready: Callable[[], None] | None = None) -> int:
        trusted_keys, key_problems = load_ops_keys(self.cfg.commands.trusted_keys)
        with ExitStack() as stack:
            self._install_signal_handlers(stack)
            self.notifier = stack.enter_context(Notifier())
            # systemd's watchdog runs in real time, whatever the simulated clock does.
            self.watchdog = WatchdogGate(self.notifier, self.notifier.watchdog_interval_s())
            self._last_sample_real = time.monotonic()
            self._build_bench(stack)
            self._build_link(stack)
            self._build_power(stack)
            if (cleartext := cleartext_password(self.cfg.mqtt)) is not None:
                log.warning("SECURITY: %s", cleartext.message)
            self.commands = CommandProcessor(
                AgentCommands(
                    self.controller, self.state, self.hardware.outputs, self.clock.monotonic
                ),
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
            # What was found wrong while building, before the first sample.
            if self.outbox.fault:
                self.faults.raise_(Fault.STORAGE, self.outbox.fault)
            self.faults.set(Fault.OPS_KEYS, key_problems)
            # Remote commands are refused until a restart: ops and the self-test must know.
            self.faults.set(Fault.REPLAY_STORE, self.commands.fault)
            self._build_charger(stack)
            self.link.start()
            stack.callback(self._say_offline)
            # Runs before _say_offline (LIFO): the switches to the safe state are
            # events and a state update that still reach the broker.
            stack.callback(self._enter_safe_state)
            self.started_mono = self.link_changed_mono = self.clock.monotonic()
            # Closed first on the way out (LIFO): no technician request reaches a
            # loop that has stopped.
            self.control = ControlSocketService(
                self.cfg.control, LocalControl(self).handle, self.faults
            )
            self.control.start()
            stack.callback(self.control.close)
            # Ready once config and hardware are up; the broker may be down for days.
            self.notifier.ready()
            if ready is not None:
                ready()
            log.info("bench %s running (%s backend)", self.cfg.bench.id, self.cfg.hardware.backend)
            self._loop()
        return 0

    def _build_bench(self, stack: ExitStack) -> None:
        """The hardware, its clock, the sensors' sampler."""
        self.hardware = stack.enter_context(
            build_hardware(self.cfg, on_tamper=self._tamper_changed)
        )
        self.clock = self.hardware.clock
        self.boot_id = self.hardware.boot_id or self.boot_id
        # What time has certainly passed, across reboots (commands' age while unsynced).
        self.time_floor = TimeFloor(
            self.cfg.storage.dir / TIME_FLOOR_FILE, monotonic=self.clock.monotonic
        )
        stack.callback(self.time_floor.save)
        self.sampler = Sampler(
            self.hardware.channels,
            self.cfg.sampling.sample_interval_s,
            on_fault=self._channel_fault,
        )
        self.tamper_open = self.hardware.tamper_open()

    def _build_link(self, stack: ExitStack) -> None:
        """The outbox, the MQTT session and everything that records and sends."""
        self.cfg.storage.dir.mkdir(parents=True, exist_ok=True)
        self.outbox = stack.enter_context(
            Outbox(
                self.cfg.storage.dir / "outbox.sqlite3",
                max_bytes=self.cfg.storage.outbox_max_bytes,
                max_age_s=self.cfg.storage.outbox_max_age_s,
            )
        )
        offline = status_message(
            self.cfg.bench.id, self.boot_id, self.clock, online=False, reason="connection_lost"
        )
        self.link = MqttLink(
            self.cfg.mqtt,
            will=Will(self.cfg.topic("status"), offline),
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
        self.events = EventLog(self.cfg.storage.dir / "events.jsonl")
        self.recorder = Recorder(
            self.outbox,
            self.publisher,
            events=self.events,
            faults=self.faults,
            clock=self.clock,
            boot_id=self.boot_id,
            link_connected=lambda: self.link.connected,
        )
        self.replies = ReplyQueue(lambda r: self.link.publish(self.cfg.topic("cmd/reply"), r))
        self.clock_sync = ClockSyncCorrector(
            self.clock,
            self.outbox,
            time_floor=self.time_floor,
            boot_id=self.boot_id,
            emit_event=self.emit_event,
            on_storage_error=self.recorder.storage_failed,
        )
        self.health = HealthReport(
            outbox=self.outbox,
            publisher=self.publisher,
            link=self.link,
            sampler=self.sampler,
            recorder=self.recorder,
            clock=self.clock,
        )

    def _build_power(self, stack: ExitStack) -> None:
        """The controller (the one owner of the outputs), counters, uplink recovery."""
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
        self.state = StatePublisher(
            bench_id=self.cfg.bench.id,
            topic=self.cfg.topic,
            link=self.link,
            controller=self.controller,
            faults=self.faults,
            clock=self.clock,
            boot_id=self.boot_id,
            tamper_open=lambda: self.tamper_open,
        )
        self.counters = CounterKeeper(
            self.cfg.counters,
            self.cfg.storage.dir / COUNTERS_FILE,
            self.clock.wall().astimezone(self.cfg.tz).date(),
            self.cfg.sampling.sample_interval_s,
            self.hardware.wifi_clients,
        )
        stack.callback(self.counters.save)
        self.uplink = UplinkSupervisor(
            self.cfg.uplink,
            self.controller,
            self.cfg.storage.dir / UPLINK_FILE,
            self.emit_event,
            self.clock.monotonic(),
        )
        stack.callback(lambda: self.uplink.save(self.clock.monotonic()))

    def _build_charger(self, stack: ExitStack) -> None:
        if self.cfg.charger is None:
            return
        reader = stack.enter_context(
            VEDirectReader(
                str(self.cfg.charger.port), self.inbox.put, baudrate=self.cfg.charger.baudrate
            )
        )  # entering the context starts the reader thread
        self.charger = ChargerFeed(
            reader, self.cfg.charger.stale_after_s, self.faults, self.controller.soc.from_bmv
        )

    def _tamper_changed(self, is_open: bool) -> None:
        """On gpiozero's thread: only enqueue."""
        self.inbox.put(TamperChanged(is_open))

    def _channel_fault(self, channel: str, code: str | None) -> None:
        self.faults.set(sensor_fault(channel), code)

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
        self.replies.send()
        try:
            self.publisher.pump()
        except StorageError as exc:  # a read error: the backlog waits, the loop goes on
            self.recorder.storage_failed(exc)

    def _handle(self, item: InboxItem) -> None:
        match item:
            case Acked() | Refused() | Connected() | Disconnected() | SetupFailed():
                self._handle_link(item)
            case MessageIn(topic, payload, retained):
                if topic == self.cfg.topic("cmd"):
                    reply = self.commands.handle_mqtt(payload, retained=retained)
                    if reply is not None:
                        self.replies.put(reply)
            case TamperChanged(is_open):
                if is_open != self.tamper_open:
                    self.tamper_open = is_open
                    self.emit_event(EventType.TAMPER, {"open": is_open})
                    self.state.publish(force=True)
            case ReloadRequested():
                self._reload_config()
            case StopRequested(name):
                log.info("stopping (%s)", name)
                self.notifier.stopping()
                self._stopping = True
            case ChargerSample():
                if self.charger is not None:
                    self.charger.take(item)
            case Call():
                item.run()

    def _handle_link(self, item: LinkEvent) -> None:
        """What the MQTT session reports: acks and refusals, the connection, set-up."""
        match item:
            case Acked(generation, mid):
                self.publisher.on_acked(generation, mid)
                if self.publisher.refused_reason is None:
                    self.faults.clear(Fault.BROKER_REFUSED)
            case Refused(generation, mid, reason):
                self.publisher.on_refused(generation, mid, reason)
                self.faults.raise_(Fault.BROKER_REFUSED, reason)
            case Connected(generation, max_packet_size):
                self.link_changed_mono = self.clock.monotonic()
                self.state.publish_online()
                self.state.publish(force=True)
                self.publisher.on_connected(generation, max_packet_size)
                self.recorder.report_drops()
            case Disconnected():
                self.link_changed_mono = self.clock.monotonic()
                self.publisher.on_disconnected()
            case SetupFailed(detail):
                self.faults.set(Fault.MQTT_SETUP, None if detail is None else detail[:300])

    def _dead_threads(self) -> list[str]:
        """The agent's threads that ended although nobody stopped them, each a fault.

        The control socket is served again at once. Any other dead thread is not
        restarted here: its fault reaches ops, and the withheld watchdog pings make
        systemd restart the whole agent (WatchdogSec), which brings every part back
        in a known state.
        """
        threads = {"mqtt": self.link.alive(), "control_socket": self.control.alive()}
        if self.charger is not None:
            threads["charger"] = self.charger.reader.is_alive
        dead = [name for name, alive in threads.items() if not alive]
        for name in dead:
            if thread_fault(name) not in self.faults:
                log.error("thread %s ended unexpectedly: watchdog pings withheld", name)
            self.faults.raise_(thread_fault(name), "ended unexpectedly; the agent will restart")
        return dead

    def _reload_config(self) -> None:
        """SIGHUP: apply what can change live (policy thresholds and schedules, ops
        keys and command limits, uplink recovery); anything else needs a restart,
        and a broken file changes nothing. Each outcome is an event."""
        try:
            new = load_config(self.cfg.source)
        except ConfigError as exc:
            log.error("configuration not reloaded: %s", exc)
            self.emit_event(
                EventType.CONFIG_RELOAD_REFUSED, {"reason": "invalid", "detail": str(exc)}
            )
            return
        plan = reload_plan(self.cfg, new)
        if not plan.live:
            log.error(
                "configuration not reloaded: [%s] changed, which needs a restart "
                "(systemctl restart bench-agent)",
                "], [".join(plan.needs_restart),
            )
            self.emit_event(
                EventType.CONFIG_RELOAD_REFUSED,
                {"reason": "needs_restart", "tables": list(plan.needs_restart)},
            )
            return
        try:
            trusted_keys, key_problems = load_ops_keys(new.commands.trusted_keys)
        except OSError as exc:  # the directory itself cannot be read
            log.error("configuration not reloaded: %s", exc)
            self.emit_event(
                EventType.CONFIG_RELOAD_REFUSED, {"reason": "invalid", "detail": str(exc)}
            )
            return
        self.faults.set(Fault.OPS_KEYS, key_problems)
        self.controller.policy = new.policy
        self.commands.reconfigure(
            trusted_keys=trusted_keys,
            allow_unsigned=new.commands.allow_unsigned,
            max_age_s=new.commands.max_age_s,
        )
        if new.uplink != self.cfg.uplink:
            self.uplink.reconfigure(new.uplink, self.clock.monotonic())
        self.cfg = new
        log.info("configuration reloaded: %s", ", ".join(plan.changed) or "ops keys only")
        self.emit_event(EventType.CONFIG_RELOADED, {"tables": list(plan.changed)})
        self.state.publish(force=True)

    # -- a sample, a telemetry record -----------------------------------------

    def _sample(self, mono_s: float) -> None:
        self.hardware.tick()
        self.faults.sync(HARDWARE_FAULTS, self.hardware.faults())
        readings = self.sampler.sample(mono_s)
        self._last_sample_real = time.monotonic()
        self.clock_sync.follow()
        local_now = self.clock.wall().astimezone(self.cfg.tz)
        # What the outputs were during the interval that just ended, for the counters.
        # An output that cannot be driven (unknown) counts as off: a floating pin is off.
        outputs_on = {name: bool(switch.is_on) for name, switch in self.hardware.outputs.items()}
        # Before the policy runs, so a power-cycle's hold applies in this sample.
        if self.uplink.step(mono_s, local_now.date(), self.link.connected):
            self.state.publish(force=True)
        self.controller.step(local_now, mono_s, readings, cpu_c=self.hardware.cpu_temperature())
        self.counters.count(local_now, mono_s, readings, outputs_on)
        self.state.publish()

    def _record_telemetry(self, mono_s: float, interval_s: float) -> None:
        self.recorder.purge_expired(mono_s)
        channels = self.sampler.close_interval()
        # Before the health snapshot: a charger fault raised or cleared here is an
        # event in the outbox, and health counts it.
        charger = None if self.charger is None else self.charger.for_telemetry()
        health = self.health(mono_s)
        body: dict[str, Any] = {
            "interval_s": interval_s,
            "channels": channels,
            "outputs": {name: sw.is_on for name, sw in self.hardware.outputs.items()},
            "battery": self.controller.snapshot(mono_s).battery.payload(),
            "tamper_open": self.tamper_open,
            "cpu_temp_c": self.hardware.cpu_temperature(),
            "charger": charger,
            "faults": sorted(self.faults),
            "health": health.payload(),
            **self.counters.for_telemetry(),
        }
        self.recorder.record("telemetry", body, mono_s)
        link = "up" if self.link.connected else "down"
        self.notifier.status(
            f"broker {link}; outbox {health.outbox_depth}; faults {len(self.faults)}"
        )

    def today(self) -> dict[str, Any]:
        """Today's counters, as in telemetry and the technician's status."""
        return self.counters.today()

    def emit_event(self, event_type: str, data: dict[str, Any]) -> None:
        self.recorder.emit_event(event_type, data)

    def _fault_changed(self, kind: str, data: dict[str, Any]) -> None:
        if not hasattr(self, "state"):
            # While run() builds the parts there is nothing to record with yet: the
            # fault is kept and goes out in the first state (start faults are raised
            # once the parts exist, see run()).
            log.warning("fault %s before the agent could record it", data.get("fault"))
            return
        self.emit_event(kind, data)
        if kind == EventType.FAULT_RAISED:
            self.state.publish(force=True)

    # -- the stop ---------------------------------------------------------------

    def _enter_safe_state(self) -> None:
        self.controller.enter_safe_state("agent stopping")
        self.state.publish(force=True)

    def _say_offline(self) -> None:
        """Clean shutdown: retained status offline, acknowledged if the broker is there."""
        offline = self.state.status(online=False, reason="shutdown")
        mid = self.link.publish(self.cfg.topic("status"), offline, retain=True)
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
