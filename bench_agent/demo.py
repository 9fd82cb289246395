"""`make demo`: the agent on a simulated bench, a private broker, and a live view.

Starts a mosquitto on a free loopback port, the agent (`bench-agent run`) on the
simulated bench of `config/sim-bench.toml` with its scripted demo day, and
`bench-ops bridge` as a city runs it: the bench sends contract-2 batches, the
bridge republishes them as v1 JSON under `smartbench-v1/`. Shows what city ops
receive there (a compact table of the latest telemetry, the outputs with the
reason for each, the latest events — refreshed as messages arrive), the bytes
the batches took on the bench's link against their v1 JSON, and what a field
technician sees (`bench-agent status`, read every 2 s over the agent's control
socket, exactly as the CLI prints it). Ctrl-C (or `--duration` seconds) stops
everything it started.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections import deque
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench_agent.errors import BenchAgentError
from bench_agent.local.control import ControlClient
from bench_agent.local.render import format_status

REPO = Path(__file__).resolve().parent.parent
SIM_CONFIG = REPO / "config" / "sim-bench.toml"
V1_PREFIX = "smartbench-v1"  # where the bridge republishes, what ops' tools read
STARTUP_WAIT_S = 30.0  # the broker's subscription, then the bridge online (a loaded machine)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _demo_config(workdir: Path, port: int) -> Path:
    """The simulated bench's config with the broker port and state dir of this run."""
    text = SIM_CONFIG.read_text()
    data = tomllib.loads(text)
    replacements = {
        f"port = {data['mqtt']['port']}": f"port = {port}",
        f'dir = "{data["storage"]["dir"]}"': f'dir = "{workdir / "state"}"',
        f'socket = "{data["control"]["socket"]}"': f'socket = "{workdir / "control.sock"}"',
        f'port = "{data["charger"]["port"]}"': f'port = "{workdir / "ttyVE"}"',
        f'scenario = "{data["sim"]["scenario"]}"': (
            f'scenario = "{(SIM_CONFIG.parent / data["sim"]["scenario"]).resolve()}"'
        ),
    }
    for old, new in replacements.items():
        text = text.replace(old, new, 1)
    path = workdir / "bench.toml"
    path.write_text(text)
    return path


class OpsView:
    """What city ops receive, kept up to date from the broker."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.status: dict[str, Any] | None = None
        self.state: dict[str, Any] | None = None
        self.record: dict[str, Any] | None = None
        self.events: deque[dict[str, Any]] = deque(maxlen=8)
        self.counts = {"telemetry": 0, "event": 0, "bytes": 0, "batches": 0, "batch_bytes": 0}
        self.changed = threading.Event()
        self.subscribed = threading.Event()
        self.bridge_online = threading.Event()

    def on_subscribe(self, *_args: Any) -> None:
        self.subscribed.set()

    def on_message(self, _client: Any, _userdata: Any, msg: paho.MQTTMessage) -> None:
        prefix, leaf = msg.topic.split("/", 1)[0], msg.topic.split("/", 2)[-1]
        if leaf == "v2":  # a batch on the bench's link: only its size matters here
            with self.lock:
                self.counts["batches"] += 1
                self.counts["batch_bytes"] += len(msg.payload)
            return
        if prefix != V1_PREFIX:
            return
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            return
        if msg.topic.endswith("/" + BRIDGE_ID):  # the bridge's own status
            if isinstance(payload, dict) and payload.get("online") is True:
                self.bridge_online.set()
            return
        with self.lock:
            if leaf in ("telemetry", "event"):
                self.counts["bytes"] += len(msg.payload)
            if leaf == "status":
                self.status = payload
            elif leaf == "state":
                self.state = payload
            elif leaf == "telemetry":
                self.counts["telemetry"] += 1
                self.record = payload["records"][-1]
            elif leaf == "event":
                self.counts["event"] += 1
                self.events.append(payload)
        self.changed.set()

    def render(self) -> str:
        with self.lock:
            return "\n".join(self._lines())

    def _lines(self) -> list[str]:
        online = self.status and self.status.get("online")
        c = self.counts
        lines = [
            f"bench-agent demo — what city ops receive on {V1_PREFIX}/ (Ctrl-C stops)",
            f"status: {'ONLINE' if online else 'offline'}   telemetry msgs: "
            f"{c['telemetry']}   events: {c['event']}   as v1 JSON: {c['bytes']} bytes",
            f"on the bench's link: {c['batches']} contract-2 batches, {c['batch_bytes']} bytes",
            "",
        ]
        r = self.record
        if r is None:
            return [*lines, "waiting for the first telemetry record…"]
        battery = r.get("battery") or {}
        soc = battery.get("soc_pct")
        lines.append(
            f"seq {r['seq']:>5}  {r['ts']}  ({r['time_quality']})  "
            f"SoC {'?' if soc is None else f'{soc:.1f}%'} [{battery.get('source', '?')}]  "
            f"CPU {r.get('cpu_temp_c')}°C  tamper {'OPEN' if r.get('tamper_open') else 'closed'}"
        )
        lines.append(
            f"{'channel':<9}{'V avg':>8}{'A avg':>9}{'A max':>9}{'W avg':>9}{'Wh':>9}  fault"
        )
        for name, ch in r["channels"].items():
            v, a, w = ch["v"], ch["a"], ch["w"]
            if v is None:
                lines.append(
                    f"{name:<9}{'—':>8}{'—':>9}{'—':>9}{'—':>9}{ch['wh']:>9.2f}  {ch['fault']}"
                )
                continue
            lines.append(
                f"{name:<9}{v[1]:>8.2f}{a[1]:>9.3f}{a[2]:>9.3f}{w[1]:>9.2f}{ch['wh']:>9.2f}  "
                f"{ch['fault'] or ''}"
            )
        lines.append("")
        lines.append("outputs (retained state):")
        outputs = (self.state or {}).get("outputs", {})
        for name, out in outputs.items():
            override = out.get("override")
            extra = f"  override {override['state']} ({override['source']})" if override else ""
            state = "ON " if out["on"] else ("off" if out["on"] is False else "?  ")
            lines.append(f"  {name:<6}{state}  {out['reason']}: {out['detail']}{extra}")
        lines.append("")
        lines.append("latest events:")
        for event in self.events:
            detail = {k: v for k, v in event.items() if k not in _ENVELOPE}
            lines.append(f"  #{event['seq']:<5} {event['ts'][11:19]} {json.dumps(detail)[:90]}")
        return lines


_ENVELOPE = {
    "v",
    "bench",
    "seq",
    "seq_epoch",
    "ts",
    "time_quality",
    "boot_id",
    "uptime_s",
    "historical",
}


class TechnicianView:
    """`bench-agent status` as a technician at the bench reads it (over the socket)."""

    REFRESH_S = 2.0

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._client = ControlClient(socket_path, timeout_s=3.0)
        self._lines = ["waiting for the agent's control socket…"]
        self._next = 0.0

    def refresh(self, now: float) -> bool:
        """Ask the agent again when due; True when the view changed."""
        if now < self._next:
            return False
        self._next = now + self.REFRESH_S
        try:
            self._lines = format_status(self._client.call("status"))
        except (BenchAgentError, OSError) as exc:
            self._lines = [f"(control socket: {exc})"]
        return True

    def render(self) -> str:
        rule = "— what a technician sees: bench-agent status " + "—" * 34
        hint = (
            f"try: .venv/bin/bench-agent --socket {self.socket_path} usb 2 off --for 30m"
            "  (or: selftest, events, LANG=id_ID.UTF-8 …)"
        )
        return "\n".join([rule, *self._lines, "", hint])


BRIDGE_ID = "demo-bridge"  # the bridge's client id; its status topic ends with it


def _start_broker(workdir: Path) -> tuple[int, subprocess.Popen[bytes]]:
    """A private mosquitto on a free loopback port."""
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    broker = subprocess.Popen(
        ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return port, broker


def _start_bridge(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "bench_agent.ops.opsctl", "bridge",
            "--host", "127.0.0.1", "--port", str(port), "--no-share",
            "--v1-prefix", V1_PREFIX, "--client-id", BRIDGE_ID, "--status-interval", "10",
        ],
        stdout=(workdir / "bridge.log").open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip


def _start_agent(workdir: Path, port: int) -> tuple[subprocess.Popen[bytes], Any]:
    agent_log = (workdir / "agent.log").open("wb")
    agent = subprocess.Popen(
        [sys.executable, "-m", "bench_agent", "-c", str(_demo_config(workdir, port)), "run"],
        stdout=agent_log,
        stderr=subprocess.STDOUT,
    )
    return agent, agent_log


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _connect(client: paho.Client, port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            client.connect("127.0.0.1", port)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-agent-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, help="stop after this many seconds, exit 0")
    args = parser.parse_args(argv)
    if shutil.which("mosquitto") is None:
        print(
            "demo: mosquitto is not installed (run `make demo`, which installs it)", file=sys.stderr
        )
        return 1
    interactive = sys.stdout.isatty() and args.duration is None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_a: stop.set())
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp, ExitStack() as stack:
        running: Running | None = None
        try:
            running = _start_all(Path(tmp), stack)
            if running is None or not _show(running, stop, args.duration, interactive):
                return 1
        except KeyboardInterrupt:
            if running is None:
                return 130
        stack.close()  # the agent first: its "offline" goes out, then the bridge, the broker
        print(f"demo: stopped (agent exit status {running.returncode})")
        return 0 if running.returncode == 0 else 1


class Running:
    """What `_start_all` started, for the loop that shows it."""

    def __init__(self, workdir: Path, view: OpsView, processes: dict[str, Any]) -> None:
        self.workdir = workdir
        self.view = view
        self.technician = TechnicianView(workdir / "control.sock")
        self.processes: dict[str, subprocess.Popen[bytes]] = processes

    @property
    def returncode(self) -> int | None:
        return self.processes["agent"].returncode


def _start_all(workdir: Path, stack: ExitStack) -> Running | None:
    """The broker, what ops see, the bridge, the agent: in this order, each waited for
    (events are not retained, and a batch no one is subscribed to is gone). Each is
    stopped by `stack`, the last started first."""
    port, broker = _start_broker(workdir)
    stack.callback(_stop, broker)
    view = OpsView()
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.on_message = view.on_message
    client.on_subscribe = view.on_subscribe
    client.on_connect = lambda c, *_a: c.subscribe([(f"{V1_PREFIX}/#", 1), ("smartbench/+/v2", 1)])
    _connect(client, port)
    client.loop_start()
    stack.callback(client.loop_stop)
    if not view.subscribed.wait(STARTUP_WAIT_S):
        print("demo: no subscription at the broker", file=sys.stderr)
        return None
    bridge = _start_bridge(workdir, port)
    stack.callback(_stop, bridge)
    if not view.bridge_online.wait(STARTUP_WAIT_S):
        print("demo: the bridge did not come online; its log:", file=sys.stderr)
        print((workdir / "bridge.log").read_text()[-3000:], file=sys.stderr)
        return None
    agent, agent_log = _start_agent(workdir, port)
    stack.callback(agent_log.close)
    stack.callback(_stop, agent)
    return Running(workdir, view, {"agent": agent, "bridge": bridge})


def _show(running: Running, stop: threading.Event, duration: float | None, live: bool) -> bool:
    """Until `stop` or `duration`: the screen redrawn when something changed (`live`),
    else printed once at the end. False if the agent or the bridge exited."""
    view, technician = running.view, running.technician
    end = None if duration is None else time.monotonic() + duration
    while not stop.is_set() and (end is None or time.monotonic() < end):
        for name, proc in running.processes.items():
            if proc.poll() is not None:
                print(f"demo: the {name} exited ({proc.returncode}); its log:", file=sys.stderr)
                print((running.workdir / f"{name}.log").read_text()[-3000:], file=sys.stderr)
                return False
        ops_changed = view.changed.wait(0.5)
        view.changed.clear()
        if (technician.refresh(time.monotonic()) or ops_changed) and live:
            sys.stdout.write("\x1b[H\x1b[2J" + view.render() + "\n\n" + technician.render() + "\n")
            sys.stdout.flush()
    if not live:
        technician.refresh(float("inf"))
        print(view.render() + "\n\n" + technician.render())
    return True


if __name__ == "__main__":
    sys.exit(main())
