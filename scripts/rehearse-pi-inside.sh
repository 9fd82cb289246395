#!/usr/bin/env bash
# Stage 5 of scripts/rehearse-pi.sh, run INSIDE the arm64 root (emulated), as PID 1
# of private PID, mount and network namespaces: everything it starts ends with it.
#
#   rehearse-inside.sh DURATION
set -euo pipefail
duration=$1
venv=/opt/bench-agent/venv
agent=$venv/bin/bench-agent
src=/opt/src/bench-agent

fail() { echo "FAIL: $*"; exit 1; }
ok() { echo "ok: $*"; }

[ "$(uname -m)" = aarch64 ] || fail "the root does not run as aarch64 ($(uname -m))"

# Every module, and the Pi libraries, import on aarch64.
"$venv/bin/python" - <<'EOF'
import importlib, pkgutil, platform
import bench_agent
# __main__ runs the CLI when imported; it is run below as the console script.
names = [
    m.name
    for m in pkgutil.walk_packages(bench_agent.__path__, "bench_agent.")
    if not m.name.endswith("__main__")
]
for name in names:
    importlib.import_module(name)
import adafruit_extended_bus, cryptography, gpiozero.pins.lgpio, lgpio, nacl.signing, paho.mqtt.client, serial, systemd.journal  # noqa
assert platform.machine() == "aarch64", platform.machine()
print(f"ok: {len(names)} modules of bench_agent, lgpio, systemd, PyNaCl, cryptography import on {platform.machine()}")
EOF
version=$("$agent" --version)
[[ $version == "bench-agent "* ]] || fail "--version printed: $version"
ok "$version"

# The reference config, unchanged: its broker name points at this root's own
# mosquitto, its TLS files are a PKI made by deploy/broker/make-pki.sh.
echo "127.0.0.1 localhost mqtt.example.city" >/etc/hosts
install -D -m 0640 "$src/config/bench-agent.toml" /etc/bench-agent/bench-agent.toml
mkdir -p /var/lib/bench-agent /run/bench-agent
checked=$("$agent" config check -c /etc/bench-agent/bench-agent.toml 2>&1) || fail "config check: $checked"
ok "config check: $checked"

# The broker: plain on 1883 (the simulated bench, the observer), TLS with client
# certificates on 8883 (the reference bench).
mkdir -p /etc/mosquitto/rehearsal
cp /etc/bench-agent/secrets/ca.crt /etc/bench-agent/secrets/broker.crt \
    /etc/bench-agent/secrets/broker.key /etc/mosquitto/rehearsal/
chown -R mosquitto: /etc/mosquitto/rehearsal
cat >/etc/mosquitto/rehearsal/mosquitto.conf <<'EOF'
per_listener_settings false
allow_anonymous true
persistence false
listener 1883 127.0.0.1
listener 8883 127.0.0.1
cafile /etc/mosquitto/rehearsal/ca.crt
certfile /etc/mosquitto/rehearsal/broker.crt
keyfile /etc/mosquitto/rehearsal/broker.key
require_certificate true
EOF
mosquitto -c /etc/mosquitto/rehearsal/mosquitto.conf >/tmp/mosquitto.log 2>&1 &
for _ in $(seq 100); do
    mosquitto_pub -h 127.0.0.1 -p 1883 -t probe -n 2>/dev/null && break
    sleep 0.2
done
mosquitto_sub -h 127.0.0.1 -p 1883 -t 'smartbench/#' -v >/tmp/messages.log 2>&1 &

messages() { grep -c -E "^smartbench/$1/$2 .*$3" /tmp/messages.log || true; }
wait_for() {  # BENCH LEAF PATTERN TIMEOUT
    for _ in $(seq $((${4} * 5))); do
        [ "$(messages "$1" "$2" "$3")" -gt 0 ] && return 0
        sleep 0.2
    done
    return 1
}
stop_agent() {  # PID LOG: SIGTERM, exit 0 expected
    kill -TERM "$1"
    local code=0
    wait "$1" || code=$?
    [ "$code" -eq 0 ] || { tail -20 "$2"; fail "the agent exited $code on SIGTERM"; }
}

# The agent's own memory under the emulator: the Rss of the guest's mappings. The
# host's view of the process (/proc/PID/smaps) also holds qemu: its binary, its
# heap ([heap]), its translated-code buffer and other allocations, all mapped in
# the host's mmap area (0x7f…); the guest (python3 and its libraries, its heap,
# its anonymous mappings) lives below it.
guest_rss_kb() {
    awk '
        /^[0-9a-f]+-[0-9a-f]+ / {
            split($1, range, "-"); start = range[1]; name = $6
            host = (length(start) == 12 && substr(start, 1, 2) == "7f") || name == "[heap]" ||
                name ~ /qemu/ || name == "[vsyscall]" || name == "[vdso]" || name == "[vvar]"
            next
        }
        /^Rss:/ { if (!host) total += $2 }
        END { print total + 0 }
    ' "/proc/$1/smaps"
}

# The simulated bench, as `make demo` runs it, for DURATION seconds.
"$agent" -c "$src/config/sim-bench.toml" run >/tmp/sim.log 2>&1 &
sim=$!
wait_for sim-bench-01 status '"online": ?true' 120 || { tail -20 /tmp/sim.log; fail "sim bench: no status online"; }
ok "sim bench: status online"
sleep "$duration"
kill -0 "$sim" || { tail -20 /tmp/sim.log; fail "sim bench: the agent died"; }
rss_total=$(awk '/^VmHWM/ {print $2}' /proc/$sim/status)
rss_guest=$(guest_rss_kb "$sim")
telemetry=$(messages sim-bench-01 telemetry '"records"')
[ "$telemetry" -gt 0 ] || fail "sim bench: no telemetry in $duration s"
ok "sim bench: $telemetry telemetry messages in $duration s"
stop_agent "$sim" /tmp/sim.log
wait_for sim-bench-01 status '"online": ?false' 10 || fail "sim bench: no offline status on SIGTERM"
ok "sim bench: offline on SIGTERM, exit 0"

# The real backend on the reference config: no GPIO, no I2C under emulation. It
# must start, connect over TLS and report what is missing.
"$agent" run -c /etc/bench-agent/bench-agent.toml >/tmp/real.log 2>&1 &
real=$!
wait_for tgk-alun-alun-01 status '"online": ?true' 120 || { tail -20 /tmp/real.log; fail "real backend: no status online"; }
ok "real backend: status online over TLS"
wait_for tgk-alun-alun-01 state '"name": ?"gpio"' 60 || { tail -20 /tmp/real.log; fail "real backend: no gpio fault"; }
wait_for tgk-alun-alun-01 state '"name": ?"i2c"' 60 || fail "real backend: no i2c fault"
ok "real backend: missing GPIO and I2C reported as faults"
grep -q PinFactoryFallback /tmp/real.log && fail "real backend: gpiozero's fallback warnings"
kill -0 "$real" || fail "real backend: the agent died"
stop_agent "$real" /tmp/real.log
wait_for tgk-alun-alun-01 status '"online": ?false' 10 || fail "real backend: no offline status"
ok "real backend: offline on SIGTERM, exit 0"

echo "rss: the agent's own (guest mappings, after ${duration} s on the sim bench): ${rss_guest} kB; the emulated process with qemu, peak: ${rss_total} kB"
