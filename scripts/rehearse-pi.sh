#!/usr/bin/env bash
# The Pi rehearsal: bench-agent installed and run on arm64 Debian bookworm (what
# Raspberry Pi OS Bookworm is built on), under qemu-user emulation, on this machine.
#
#   sudo scripts/rehearse-pi.sh          (make rehearse-pi; a few minutes)
#   REHEARSAL_DIR=DIR                    where the arm64 root is kept between runs
#                                        (default .cache/pi-rehearsal; delete it to
#                                        start from scratch: make clean-rehearsal)
#
# Stages (each timed; any failure exits non-zero):
#   1. host tools: debootstrap and qemu-user-static (Debian packages), and the
#      binfmt_misc registration of qemu-aarch64 (fix-binary flag: no emulator copy
#      inside the root). Made only if missing, and undone on exit if made here.
#   2. the arm64 root: debootstrap --arch=arm64 bookworm (kept between runs).
#   3. the Debian packages a bench's installer needs, as on Pi OS, and mosquitto.
#   4. the package with its `pi` extra into /opt/bench-agent/venv inside the root,
#      from a copy of this checkout (rebuilt only when the source changed).
#   5. inside the root, in private PID, mount and network namespaces: every
#      module of bench_agent imports on aarch64; --version; `config check` of the
#      reference config with a PKI made by deploy/broker/make-pki.sh; the agent on
#      the simulated bench for DURATION s (default 60) against a mosquitto inside
#      the root (status online, telemetry, offline on SIGTERM); the real backend on
#      the reference config against a TLS listener (online, the missing GPIO and
#      I2C reported as faults, offline on SIGTERM); the agent's peak RSS.
# Nothing of the host is changed but the binfmt registration (restored) and the
# two Debian packages of stage 1; every mount and process of stage 5 lives in
# namespaces that end with it.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=${REHEARSAL_DIR:-$repo/.cache/pi-rehearsal}
root=$work/root
mirror=${REHEARSAL_MIRROR:-http://deb.debian.org/debian}
duration=${DURATION:-60}

die() { echo "rehearse-pi: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, chroot, namespaces, binfmt_misc)"

declare -a stage_names=() stage_times=()
stage_started=0
stage() {
    finish_stage
    echo "rehearse-pi: == $* =="
    stage_names+=("$*")
    stage_started=$(date +%s%N)
}
finish_stage() {
    if ((${#stage_names[@]} > ${#stage_times[@]})); then
        local ms=$((($(date +%s%N) - stage_started) / 1000000))
        stage_times+=("$((ms / 1000)).$(printf '%03d' $((ms % 1000)))")
    fi
}

binfmt_dir=/proc/sys/fs/binfmt_misc
mounted_binfmt=0
registered_qemu=0
cleanup() {
    local status=$?
    if ((registered_qemu)) && [ -e $binfmt_dir/qemu-aarch64 ]; then
        echo -1 >$binfmt_dir/qemu-aarch64 || true
    fi
    if ((mounted_binfmt)); then
        umount $binfmt_dir || true
    fi
    if ((status != 0)); then
        echo "rehearse-pi: FAILED (exit $status); the root is kept in $root" >&2
    fi
    exit $status
}
trap cleanup EXIT

# -- 1. host tools -----------------------------------------------------------------
stage "host tools and binfmt"
missing=()
for pkg in debootstrap qemu-user-static openssl; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [ ! -e $binfmt_dir/register ]; then
    mount -t binfmt_misc binfmt_misc $binfmt_dir
    mounted_binfmt=1
fi
if [ ! -e $binfmt_dir/qemu-aarch64 ]; then
    grep -v '^#' /usr/lib/binfmt.d/qemu-aarch64.conf >$binfmt_dir/register
    registered_qemu=1
fi
grep -q '^flags: .*F' $binfmt_dir/qemu-aarch64 || die "qemu-aarch64 is registered without the fix-binary flag"

# -- 2. the arm64 root -------------------------------------------------------------
stage "arm64 root (debootstrap)"
if [ ! -f "$root/.bootstrapped" ]; then
    rm -rf "$root"
    mkdir -p "$root"
    debootstrap --arch=arm64 --variant=minbase --include=ca-certificates,iproute2,procps \
        bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
        { tail -20 "$work/debootstrap.log"; die "debootstrap failed (log: $work/debootstrap.log)"; }
    touch "$root/.bootstrapped"
fi
# What reaches the package registries from this machine: its resolver, its CA
# bundle (a proxy of this network may sign with its own CA) and pip's settings.
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf"

# in_root [--net] CMD...: run in the root, in private PID and mount namespaces (and a
# private network with --net), with /proc, /sys, a minimal /dev and tmpfs /tmp, /run.
in_root() {
    local net=()
    if [ "$1" = --net ]; then net=(--net); shift; fi
    unshare --pid --fork --kill-child --mount --uts --ipc "${net[@]}" \
        bash -c '
            set -e
            root=$1; shift
            mount --make-rprivate /
            mount -t proc proc "$root/proc"
            mount -t sysfs sysfs "$root/sys" 2>/dev/null || mount --rbind /sys "$root/sys"
            mount -t tmpfs -o mode=0755 dev "$root/dev"
            for node in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
                mknod -m 0666 "$root/dev/${node%%:*}" c $(echo "${node#*:}" | tr : " ")
            done
            mkdir "$root/dev/pts" "$root/dev/shm"
            mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts"
            ln -s pts/ptmx "$root/dev/ptmx"
            ln -s /proc/self/fd "$root/dev/fd"
            mount -t tmpfs tmpfs "$root/dev/shm"
            mount -t tmpfs tmpfs "$root/tmp"
            mount -t tmpfs tmpfs "$root/run"
            ip link set lo up 2>/dev/null || true
            exec chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
                HOME=/root LANG=C.UTF-8 "$@"
        ' rehearse-root "$root" "$@"
}

# -- 3. Debian packages, as a bench's installer wants them ----------------------------
stage "Debian packages (arm64)"
packages=(python3-venv python3-dev gcc pkg-config libsystemd-dev swig mosquitto mosquitto-clients openssl)
if ! in_root dpkg-query -W "${packages[@]}" >/dev/null 2>&1; then
    in_root bash -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${packages[*]}" \
        >"$work/apt.log" 2>&1 || { tail -20 "$work/apt.log"; die "apt-get failed in the root"; }
fi

# -- 4. the package into a venv -----------------------------------------------------
stage "venv with the pi extra (pip, aarch64)"
src=$root/opt/src/bench-agent
stamp=$(git ls-files -z pyproject.toml bench_agent config deploy | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
if [ ! -f "$root/opt/bench-agent/venv/.rehearsal-source" ] ||
    [ "$(cat "$root/opt/bench-agent/venv/.rehearsal-source")" != "$stamp" ]; then
    rm -rf "$src"
    mkdir -p "$src"
    git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$src"
    in_root bash -c 'set -e
        [ -x /opt/bench-agent/venv/bin/python ] || python3 -m venv /opt/bench-agent/venv
        # As deploy/install.sh does it: the lock, hash-checked, then the package.
        /opt/bench-agent/venv/bin/python -m pip install -q --disable-pip-version-check \
            --use-pep517 --require-hashes -r /opt/src/bench-agent/deploy/requirements.lock
        /opt/bench-agent/venv/bin/python -m pip install -q --disable-pip-version-check \
            --no-deps --no-build-isolation /opt/src/bench-agent' \
        >"$work/pip.log" 2>&1 || { tail -30 "$work/pip.log"; die "pip failed in the root"; }
    echo "$stamp" >"$root/opt/bench-agent/venv/.rehearsal-source"
fi

# -- 5. the checks, inside --------------------------------------------------------------
stage "checks on aarch64 (imports, config check, sim bench ${duration} s, real backend)"
pki=$root/etc/bench-agent/secrets
rm -rf "$pki" "$root/etc/bench-agent/ops-keys" "$root/var/lib/rehearsal"
mkdir -p "$pki" "$root/etc/bench-agent/ops-keys"
deploy/broker/make-pki.sh "$pki" ca >/dev/null
deploy/broker/make-pki.sh "$pki" broker 127.0.0.1 localhost mqtt.example.city >/dev/null
deploy/broker/make-pki.sh "$pki" client tgk-alun-alun-01 >/dev/null
cp "$pki/tgk-alun-alun-01.crt" "$pki/bench.crt"
cp "$pki/tgk-alun-alun-01.key" "$pki/bench.key"
cp scripts/rehearse-pi-inside.sh "$root/opt/rehearse-inside.sh"
in_root --net /bin/bash /opt/rehearse-inside.sh "$duration" | tee "$work/inside.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || die "a check inside the root failed (log: $work/inside.log)"
finish_stage

echo
echo "rehearse-pi: passed on $(uname -m) host, arm64 guest (qemu-user $(dpkg-query -W -f='${Version}' qemu-user-static))"
printf '%-72s %8s\n' "stage" "seconds"
for i in "${!stage_names[@]}"; do
    printf '%-72s %8.1f\n' "${stage_names[$i]}" "${stage_times[$i]}"
done
grep '^rss:' "$work/inside.log" || true
