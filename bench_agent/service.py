"""The composition root and the main loop of the daemon (`bench-agent run`).

Threads (paho's network thread, gpiozero's callbacks, the charger reader, the
control socket) only put items on the inbox; this loop is the one place that
decides and acts. Every interval is in agent seconds (`Clock`), so the same
loop runs a real bench and a simulated one that is sped up.

`start()` builds every part inside one `ExitStack`, so every exit path the
process controls puts the outputs in their safe state and tells the broker the
bench is offline; `turn()` is one pass of the loop. The parts do the work
(power/, link/, local/, remote/); what stays here is the wiring, the order of a
sample, and the routing of what the inbox receives.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from typing import TypeVar

from nacl.signing import VerifyKey

from bench_agent.clock import TimeFloor, next_due, read_boot_id
from bench_agent.config import Config
from bench_agent.errors import StorageError
from bench_agent.faults import Fault, FaultRegistry, ThreadWatch, sensor_fault
from bench_agent.hardware.backend import HardwareFactory, build_hardware
from bench_agent.hardware.bundle import Hardware
from bench_agent.hardware.vedirect.reader import ChargerSample
from bench_agent.inbox import Call, Inbox, InboxItem, ReloadRequested, StopRequested, TamperChanged
from bench_agent.json_value import JsonObject
from bench_agent.link.assembly import build_link_parts
from bench_agent.link.mqtt import (
    Acked,
    Connected,
    Disconnected,
    Link,
    LinkFactory,
    MessageIn,
    MqttLink,
    Refused,
    SetupFailed,
)
from bench_agent.link.session import LinkSession
from bench_agent.link.state import StatePublisher, config_hash
from bench_agent.link.telemetry import TelemetryRecord
from bench_agent.local.control_api import LocalControl
from bench_agent.local.control_service import ControlSocketService
from bench_agent.power.assembly import build_power_parts, open_charger_feed
from bench_agent.power.charger_feed import ChargerFeed
from bench_agent.power.sampler import Sampler
from bench_agent.preflight import cleartext_password
from bench_agent.reload import reload_config
from bench_agent.remote.agent_control import AgentCommands, build_command_processor
from bench_agent.systemd import Notifier, WatchdogGate, progress_is_recent
from bench_agent.vocabulary import EventType

log = logging.getLogger(__name__)
T = TypeVar("T")

# Faults that Hardware.faults() owns: raised while present there, cleared when gone.
HARDWARE_FAULTS = frozenset({Fault.GPIO, Fault.I2C})
STOP_GRACE_S = 2.0  # how long shutdown waits for the broker to acknowledge "offline"


class Agent:
    """The bench agent. `Agent(cfg).run()` blocks until SIGTERM/SIGINT; returns the exit code.

    The hardware and the link come from factories (the real ones by default), so
    a unit test runs the whole agent, turn by turn, on a simulated bench with an
    in-memory link and a clock it moves itself.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        hardware_factory: HardwareFactory = build_hardware,
        link_factory: LinkFactory = MqttLink,
    ) -> None:
        self.cfg = cfg
        self._hardware_factory = hardware_factory
        self._link_factory = link_factory
        self.inbox = Inbox()
        self.stopping = False
        # Every source reports here; each change is an event, a raise also a state.
        self.faults = FaultRegistry(self._fault_changed)
        self.threads = ThreadWatch(self.faults)
        self.tamper_open: bool | None = None
        # Built in start(), inside the ExitStack that will close them.
        self.hardware: Hardware
        self.link: Link
        self.state: StatePublisher
        self.charger: ChargerFeed | None = None

    def run(self, ready: Callable[[], None] | None = None) -> int:
        with ExitStack() as stack:
            self.inbox.install_signal_handlers(stack)
            self.start(stack)
            if ready is not None:
                ready()
            while not self.stopping:
                self.turn()
        return 0

    # -- wiring -----------------------------------------------------------------

    def start(self, stack: ExitStack) -> None:
        """Build every part on `stack` (closed in reverse: control socket, safe state,
        offline, …) and start the link; ready for `turn()`."""
        cfg = self.cfg
        self._build_bench(stack)
        clock = self.clock
        self.notifier = stack.enter_context(Notifier())
        # systemd's watchdog runs in real time, whatever the simulated clock does.
        self.watchdog = WatchdogGate(self.notifier, self.notifier.watchdog_interval_s())
        self._last_sample_real = time.monotonic()
        self._build_link(stack)
        self._build_power(stack)
        if (cleartext := cleartext_password(cfg.mqtt)) is not None:
            log.warning("SECURITY: %s", cleartext.message)
        self.commands, key_problems = build_command_processor(
            cfg,
            AgentCommands(self.controller, self.state, self.hardware.outputs, clock.monotonic),
            clock=clock,
            time_floor=self.time_floor,
            emit_event=self.emit_event,
        )
        # What was found wrong while building, before the first sample.
        if self.outbox.fault:
            self.faults.raise_(Fault.STORAGE, self.outbox.fault)
        self.faults.set(Fault.OPS_KEYS, key_problems)
        # Remote commands are refused until a restart: ops and the self-test must know.
        self.faults.set(Fault.REPLAY_STORE, self.commands.fault)
        charger = self.charger = open_charger_feed(
            cfg, stack, on_sample=self.inbox.put, faults=self.faults, controller=self.controller
        )
        if charger is not None:
            self.threads.watch("charger", lambda: charger.reader.is_alive)
        self.link.start()
        self.threads.watch("mqtt", self.link.alive)
        stack.callback(self.link.close)
        stack.callback(self.state.say_offline, self._wait_for_ack)
        # Before "offline" (LIFO): the switches to the safe state are events and a
        # state update that still reach the broker.
        stack.callback(self._enter_safe_state)
        self.started_mono = clock.monotonic()
        # Closed first on the way out (LIFO): no technician request reaches a loop
        # that has stopped.
        self.control = ControlSocketService(cfg.control, LocalControl(self).handle, self.faults)
        self.control.start()
        self.threads.watch("control_socket", self.control.alive)
        stack.callback(self.control.close)
        now = clock.monotonic()
        self._next_sample, self._next_publish = now, now + cfg.sampling.publish_interval_s
        # Ready once config and hardware are up; the broker may be down for days.
        self.notifier.ready()
        log.info("bench %s running (%s backend)", cfg.bench.id, cfg.hardware.backend)

    def _build_bench(self, stack: ExitStack) -> None:
        """The hardware, its clock, the sensors' sampler."""
        self.hardware = stack.enter_context(
            self._hardware_factory(self.cfg, lambda is_open: self.inbox.put(TamperChanged(is_open)))
        )
        self.clock = self.hardware.clock
        self.boot_id = self.hardware.boot_id or read_boot_id()
        # Which configuration this bench runs, in its `status` (the file as it was at start).
        self.config_hash = config_hash(self.cfg.source)
        # What time has certainly passed, across reboots (commands' age while unsynced).
        self.time_floor = TimeFloor(
            self.cfg.storage.dir / "time-floor.json", monotonic=self.clock.monotonic
        )
        stack.callback(self.time_floor.save)
        self.sampler = Sampler(
            self.hardware.channels,
            self.cfg.sampling.sample_interval_s,
            on_fault=lambda channel, code: self.faults.set(sensor_fault(channel), code),
        )
        self.tamper_open = self.hardware.tamper_open()

    def _build_link(self, stack: ExitStack) -> None:
        parts = build_link_parts(
            self.cfg,
            stack,
            clock=self.clock,
            boot_id=self.boot_id,
            config_hash=self.config_hash,
            faults=self.faults,
            time_floor=self.time_floor,
            sampler=self.sampler,
            link_factory=self._link_factory,
            on_link_event=self.inbox.put,
        )
        self.outbox, self.link, self.publisher = parts.outbox, parts.link, parts.publisher
        self.recorder, self.events, self.replies = parts.recorder, parts.events, parts.replies
        self.clock_sync, self.health = parts.clock_sync, parts.health

    def _build_power(self, stack: ExitStack) -> None:
        """The power side, then what joins the two sides: the retained state (it reads
        the controller and goes out on the link) and the session's reactions."""
        parts = build_power_parts(
            self.cfg,
            stack,
            outputs=self.hardware.outputs,
            wifi_clients=self.hardware.wifi_clients,
            clock=self.clock,
            emit_event=self.emit_event,
        )
        self.controller, self.counters, self.uplink = parts.controller, parts.counters, parts.uplink
        self.state = StatePublisher(
            bench_id=self.cfg.bench.id,
            topic=self.cfg.topic,
            link=self.link,
            controller=self.controller,
            faults=self.faults,
            clock=self.clock,
            boot_id=self.boot_id,
            tamper_open=lambda: self.tamper_open,
            config_hash=self.config_hash,
        )
        self.session = LinkSession(
            publisher=self.publisher,
            recorder=self.recorder,
            state=self.state,
            faults=self.faults,
            clock=self.clock,
        )

    def request_stop(self) -> None:
        self.inbox.put(StopRequested("request"))

    def run_on_loop(self, fn: Callable[[], T], timeout_s: float) -> T:
        """From another thread: run `fn` on the main loop (see `Inbox.call`)."""
        return self.inbox.call(fn, timeout_s)

    # -- the loop -----------------------------------------------------------

    def turn(self, *, wait: bool = True) -> None:
        """One pass of the loop: a sample and a telemetry record when due, the
        watchdog, then what the inbox holds (waiting for it until the next due
        time, unless `wait` is False)."""
        cfg, now = self.cfg.sampling, self.clock.monotonic()
        if now >= self._next_sample:
            self._sample(now)
            self._next_sample = next_due(self._next_sample, now, cfg.sample_interval_s)
        if now >= self._next_publish:
            self._record_telemetry(now, cfg.publish_interval_s)
            self._next_publish = next_due(self._next_publish, now, cfg.publish_interval_s)
        real_now = time.monotonic()
        sample_every_real = max(self.clock.to_real_s(cfg.sample_interval_s), 1.0)
        progressing = progress_is_recent(real_now, self._last_sample_real, sample_every_real)
        self.watchdog.tick(real_now, progressing and not self.threads.dead())
        next_due_mono = min(self._next_sample, self._next_publish)
        wait_s = self.clock.to_real_s(next_due_mono - self.clock.monotonic()) if wait else 0.0
        if (ping_due := self.watchdog.seconds_until_due(real_now)) is not None:
            wait_s = min(wait_s, ping_due)
        for item in self.inbox.take(max(wait_s, 0.0)):
            self._handle(item)
        self.replies.send()
        try:
            self.publisher.pump()
        except StorageError as exc:  # a read error: the backlog waits, the loop goes on
            self.recorder.storage_failed(exc)

    def _handle(self, item: InboxItem) -> None:
        match item:
            case Acked() | Refused() | Connected() | Disconnected() | SetupFailed():
                self.session.handle(item)
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
                self.cfg = reload_config(self.cfg, self._apply_live, self.emit_event)
            case StopRequested(name):
                log.info("stopping (%s)", name)
                self.notifier.stopping()
                self.stopping = self.inbox.closed_to_calls = True
            case ChargerSample():
                if self.charger is not None:
                    self.charger.take(item)
            case Call():
                item.run()

    def _apply_live(
        self, new: Config, trusted_keys: Mapping[str, VerifyKey], problems: str | None
    ) -> None:
        """A reload that can be made live (see reload.py)."""
        self.faults.set(Fault.OPS_KEYS, problems)
        self.controller.policy = new.policy
        self.commands.reconfigure(
            trusted_keys=dict(trusted_keys),
            allow_unsigned=new.commands.allow_unsigned,
            max_age_s=new.commands.max_age_s,
        )
        if new.uplink != self.cfg.uplink:
            self.uplink.reconfigure(new.uplink, self.clock.monotonic())
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
        record = TelemetryRecord(
            interval_s=interval_s,
            channels=channels,
            outputs={name: sw.is_on for name, sw in self.hardware.outputs.items()},
            battery=self.controller.snapshot(mono_s).battery,
            tamper_open=self.tamper_open,
            cpu_temp_c=self.hardware.cpu_temperature(),
            charger=charger,
            faults=tuple(sorted(self.faults)),
            health=self.health(mono_s),
            counters=self.counters.for_telemetry(),
        )
        self.recorder.record("telemetry", record.payload(), mono_s)
        link = "up" if self.link.connected else "down"
        depth = record.health.outbox_depth
        self.notifier.status(f"broker {link}; outbox {depth}; faults {len(self.faults)}")

    def emit_event(self, event_type: str, data: JsonObject) -> None:
        self.recorder.emit_event(event_type, data)

    def _fault_changed(self, kind: str, data: JsonObject) -> None:
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

    def _wait_for_ack(self, mid: int) -> None:
        """While stopping: wait (bounded) for the broker's ack of `mid`; the acks of the
        records sent before it (they come first) take them out of the outbox."""

        def acked(item: InboxItem) -> bool:
            if isinstance(item, Acked):
                self.session.handle(item)
            return isinstance(item, Acked) and item.mid == mid

        self.inbox.wait_for(acked, STOP_GRACE_S)

    def _enter_safe_state(self) -> None:
        self.controller.enter_safe_state("agent stopping")
        self.state.publish(force=True)
        self.publisher.flush()  # what waits for its batch goes before "offline"
