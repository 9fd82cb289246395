#!/usr/bin/env bash
# Install bench-agent on a Raspberry Pi OS Bookworm bench, as root. Idempotent:
# a second run changes nothing, and an existing configuration is NEVER
# overwritten (the units and the polkit rule are ours and are kept up to date).
#
#   sudo deploy/install.sh [--source DIR] [--root DIR] [--no-venv] [--no-start]
#
#   --source DIR  repo checkout to install from (default: this script's repo)
#   --root DIR    install into a scratch root: every file is written under DIR,
#                 but nothing touches the running system (no apt, useradd,
#                 chown, systemctl, raspi-config); those commands are written,
#                 in order, to DIR/var/log/bench-agent-install.log instead.
#   --no-venv     do not create /opt/bench-agent/venv (the tests use it: a real
#                 venv with lgpio and systemd-python takes minutes to build)
#   --no-start    enable the unit but do not start it now
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source_dir=$(cd "$here/.." && pwd)
root=""
make_venv=1
start_now=1

die() { echo "install: $*" >&2; exit 1; }
while (($#)); do
    case "$1" in
        --source) source_dir=$(cd "${2:?--source needs a directory}" && pwd); shift 2 ;;
        --root) mkdir -p "${2:?--root needs a directory}"; root=$(cd "$2" && pwd); shift 2 ;;
        --no-venv) make_venv=0; shift ;;
        --no-start) start_now=0; shift ;;
        -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

user=bench-agent
groups=(gpio i2c dialout)
opt=/opt/bench-agent
etc=/etc/bench-agent
state=/var/lib/bench-agent
unit=/etc/systemd/system/bench-agent.service
hotspot_unit=/etc/systemd/system/bench-hotspot@.service
polkit_rule=/etc/polkit-1/rules.d/50-bench-agent-hotspot.rules
# Earlier releases granted NetworkManager's network-control (any profile, the
# uplink too): removed on upgrade, since the hotspot unit replaces it.
old_polkit_rule=/etc/polkit-1/rules.d/50-bench-agent-nmcli.rules
log=/var/log/bench-agent-install.log

[ -f "$source_dir/config/bench-agent.toml" ] || die "$source_dir/config/bench-agent.toml not found (is --source a bench-agent checkout?)"
[ -n "$root" ] || [ "$(id -u)" -eq 0 ] || die "run as root (sudo), or with --root DIR"

# shellcheck source=deploy/system-commands.sh
source "$here/system-commands.sh"
start_command_log "$root" "$log"

changed=0
# install_file MODE SRC DEST: copy when missing or different (mtime kept when
# equal, so a re-run is a no-op); sets $changed.
install_file() {
    local mode=$1 src=$2 dest=$root$3
    if ! cmp -s "$src" "$dest"; then
        install -D -m "$mode" "$src" "$dest"
        changed=1
    fi
    chmod "$mode" "$dest"
}
# make_dir MODE OWNER:GROUP PATH
make_dir() {
    mkdir -p "$root$3"
    chmod "$1" "$root$3"
    sys "chown $2 $3"
}

# 1. Debian packages to build the venv (systemd-python and lgpio compile C).
sys "dpkg-query -W python3-venv python3-dev gcc pkg-config libsystemd-dev swig >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv python3-dev gcc pkg-config libsystemd-dev swig)"

# 2. Groups and the system user. gpio and i2c exist on Raspberry Pi OS, not on
# plain Debian; dialout exists everywhere.
for g in "${groups[@]}"; do
    sys "getent group $g >/dev/null || groupadd --system $g"
done
sys "getent passwd $user >/dev/null || useradd --system --user-group --home-dir $state --no-create-home --shell /usr/sbin/nologin --comment 'smart bench agent' $user"
sys "usermod --append --groups $(IFS=,; echo "${groups[*]}") $user"

# 3. Configuration: root-owned, readable by the agent's group, never overwritten.
make_dir 0750 "root:$user" "$etc"
if [ -e "$root$etc/bench-agent.toml" ]; then
    echo "install: keeping existing $etc/bench-agent.toml"
else
    install -m 0640 "$source_dir/config/bench-agent.toml" "$root$etc/bench-agent.toml"
    echo "install: wrote $etc/bench-agent.toml from config/bench-agent.toml: set [bench] id and [mqtt] host"
fi
chmod 0640 "$root$etc/bench-agent.toml"
sys "chown root:$user $etc/bench-agent.toml"
# Ops' public keys for signed commands ([commands] trusted_keys): root's to
# change, readable by the agent. An empty directory refuses every command.
make_dir 0750 "root:$user" "$etc/ops-keys"
# Secrets (TLS key, MQTT password): the agent's own, nobody else's.
mkdir -p "$root$etc/secrets"
chmod 0700 "$root$etc/secrets"
find "$root$etc/secrets" -type f -exec chmod 0600 {} +
sys "chown -R $user:$user $etc/secrets"

# 4. State (store-and-forward database). systemd's StateDirectory= would make
# it too; making it here lets a technician inspect it before the first start.
make_dir 0750 "$user:$user" "$state"

# 5. The venv, rebuilt only when the package source changed.
if ((make_venv)); then
    stamp_file=$root$opt/venv/.installed-source
    stamp=$(cd "$source_dir" && find pyproject.toml deploy/requirements.lock bench_agent -type f ! -name '*.pyc' -print0 |
        sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
    if [ ! -f "$stamp_file" ] || [ "$(cat "$stamp_file")" != "$stamp" ]; then
        [ -x "$root$opt/venv/bin/python" ] || python3 -m venv "$root$opt/venv"
        # Every dependency pinned and checked against its hash (deploy/requirements.lock,
        # made by `make lock`): a bench installs exactly what was tested, and a
        # tampered package on the way is refused. Then the package itself, from the
        # checkout, with the setuptools the lock just installed (no other download).
        # --use-pep517: the two packages that come as source are built in isolation
        # (Bookworm's pip would otherwise run their legacy setup.py install).
        # Not editable: the service must not depend on the checkout staying put.
        "$root$opt/venv/bin/python" -m pip install -q --disable-pip-version-check \
            --use-pep517 --require-hashes -r "$source_dir/deploy/requirements.lock"
        # Built from a clean copy of the package's own files: setuptools builds in
        # the source tree's build/, and a build/lib left by an earlier release
        # would carry modules that no longer exist into the venv.
        package_copy=$(mktemp -d)
        cp -a "$source_dir/pyproject.toml" "$source_dir/README.md" "$source_dir/bench_agent" "$package_copy/"
        find "$package_copy" -name __pycache__ -prune -exec rm -rf {} +
        "$root$opt/venv/bin/python" -m pip install -q --disable-pip-version-check \
            --no-deps --no-build-isolation "$package_copy"
        rm -rf "$package_copy"
        echo "$stamp" >"$stamp_file"
        changed=1
    fi
else
    echo "install: --no-venv: not creating $opt/venv"
fi
[ -f "$source_dir/README.md" ] && install_file 0644 "$source_dir/README.md" "$opt/README.md"

# 6. The units and the polkit rule for the hotspot (ours: replaced when they differ).
install_file 0644 "$here/bench-agent.service" "$unit"
install_file 0644 "$here/bench-hotspot@.service" "$hotspot_unit"
install_file 0644 "$here/polkit/50-bench-agent-hotspot.rules" "$polkit_rule"
sys "chown root:root $unit $hotspot_unit $polkit_rule"
if [ -e "$root$old_polkit_rule" ]; then
    rm -f "$root$old_polkit_rule"
    echo "install: removed $old_polkit_rule (it let the agent switch any NetworkManager profile)"
    changed=1
fi

# 7. I2C bus 1 (INA219 sensors).
if [ -n "$root" ] || command -v raspi-config >/dev/null; then
    # 0 means "enable" in raspi-config's nonint mode; it is idempotent.
    sys "raspi-config nonint do_i2c 0"
else
    echo "install: raspi-config not found: enable I2C by hand - add 'dtparam=i2c_arm=on'" \
        "to /boot/firmware/config.txt and 'i2c-dev' to /etc/modules-load.d/i2c.conf, then reboot"
fi

# 8. systemd. A restart only when something the running agent uses changed.
sys "systemctl daemon-reload"
if ((start_now)); then
    sys "systemctl enable --now bench-agent.service"
    ((changed)) && sys "systemctl try-restart bench-agent.service"
else
    sys "systemctl enable bench-agent.service"
fi
echo "install: done${root:+ (scratch root $root; commands recorded in $root$log)}"
echo "install: check the bench with: sudo bench-agent config check -c $etc/bench-agent.toml; then: sudo bench-agent selftest"
