#!/usr/bin/env bash
# Remove bench-agent from a bench, as root. Idempotent.
#
#   sudo deploy/uninstall.sh [--root DIR] [--purge]
#
# Removes the unit, the venv (/opt/bench-agent) and the polkit rule. Keeps the
# configuration (/etc/bench-agent, with the bench's TLS key) and the stored
# telemetry (/var/lib/bench-agent) so a reinstall picks up where it left off,
# unless --purge, which also removes those and the bench-agent user.
# --root DIR works as in install.sh: files are removed under DIR and system
# commands are recorded in DIR/var/log/bench-agent-uninstall.log.
set -euo pipefail

root=""
purge=0
die() { echo "uninstall: $*" >&2; exit 1; }
while (($#)); do
    case "$1" in
        --root) root=$(cd "${2:?--root needs a directory}" && pwd); shift 2 ;;
        --purge) purge=1; shift ;;
        -h | --help) sed -n '2,11p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
[ -n "$root" ] || [ "$(id -u)" -eq 0 ] || die "run as root (sudo), or with --root DIR"

# shellcheck source=deploy/system-commands.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/system-commands.sh"
start_command_log "$root" /var/log/bench-agent-uninstall.log

# Stop first, so the agent publishes its offline status and closes the store.
sys "systemctl disable --now bench-agent.service 2>/dev/null || true"
rm -f "$root/etc/systemd/system/bench-agent.service" "$root/etc/systemd/system/bench-hotspot@.service"
# The hotspot rule, and the nmcli rule of earlier releases.
rm -f "$root/etc/polkit-1/rules.d/50-bench-agent-hotspot.rules" "$root/etc/polkit-1/rules.d/50-bench-agent-nmcli.rules"
rm -rf "$root/opt/bench-agent"
sys "systemctl daemon-reload"

if ((purge)); then
    rm -rf "$root/etc/bench-agent" "$root/var/lib/bench-agent"
    # The groups gpio, i2c and dialout are shared with the system: kept.
    sys "getent passwd bench-agent >/dev/null && userdel bench-agent || true"
    echo "uninstall: removed bench-agent, its configuration and its stored data"
else
    echo "uninstall: removed bench-agent; kept /etc/bench-agent and /var/lib/bench-agent (--purge removes them)"
fi
