#!/usr/bin/env bash
# One idempotent set-up step for this machine kind (Debian 12, root): system packages, kernel-header
# wiring for bcc, bpffs/tracefs/debugfs mounts, and a venv with the project installed in editable mode.
# Fast the second time: every step checks before it acts. Usage: scripts/setup.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${RETINA_OTEL_VENV:-$ROOT/.venv}
DEV=0
[[ "${1:-}" == "--dev" ]] && DEV=1

log() { printf '[setup] %s\n' "$*" >&2; }

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# --- Debian packages -------------------------------------------------------------------------------
DEB_ARCH=$(dpkg --print-architecture)  # amd64 or arm64: the headers package and directories are per architecture
APT_PACKAGES=(python3-bpfcc bpfcc-tools libbpfcc libatomic1 "linux-headers-$DEB_ARCH" iproute2 tcpdump iperf3 nftables
  iptables dnsmasq-base iputils-ping ethtool procps kmod bpftool)
[[ $DEV -eq 1 ]] && APT_PACKAGES+=(prometheus kubectl)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- kernel headers for bcc ------------------------------------------------------------------------
# bcc compiles against /lib/modules/$(uname -r)/build. When the running kernel ships none, link the
# newest Debian headers package in (older than the kernel: our BPF code uses only UAPI-stable types).
KREL=$(uname -r)
if [[ ! -e /lib/modules/$KREL/build/include ]]; then
  hdr=$(ls -d /usr/src/linux-headers-*-"$DEB_ARCH" 2>/dev/null | sort -V | tail -n 1 || true)
  if [[ -n "$hdr" ]]; then
    common=${hdr%-"$DEB_ARCH"}-common
    log "linking kernel headers $hdr into /lib/modules/$KREL"
    as_root mkdir -p "/lib/modules/$KREL"
    as_root ln -sfn "$hdr" "/lib/modules/$KREL/build"
    [[ -d "$common" ]] && as_root ln -sfn "$common" "/lib/modules/$KREL/source"
  else
    log "WARNING: no kernel headers found; bcc receivers will fail to compile"
  fi
fi

# --- pseudo file systems ---------------------------------------------------------------------------
mountpoint -q /sys/fs/bpf || as_root mount -t bpf bpf /sys/fs/bpf 2>/dev/null || log "could not mount bpffs"
mountpoint -q /sys/kernel/tracing || as_root mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || log "could not mount tracefs"
mountpoint -q /sys/kernel/debug || as_root mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || log "could not mount debugfs"

# --- Python venv -----------------------------------------------------------------------------------
PY=${PYTHON:-python3}
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating venv $VENV"
  "$PY" -m venv "$VENV"
fi
# bcc is a pure-Python module over libbcc that Debian installs in dist-packages. Expose only that
# package to the venv (not every Debian module) through a directory holding a link to it.
BCC_DIR=/usr/lib/python3/dist-packages/retina-otel-bcc
[[ -e $BCC_DIR/bcc ]] || { as_root mkdir -p "$BCC_DIR"; as_root ln -sfn /usr/lib/python3/dist-packages/bcc "$BCC_DIR/bcc"; }
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[[ -f "$site/debian-bcc.pth" ]] || echo "$BCC_DIR" > "$site/debian-bcc.pth"

stamp="$VENV/.retina-otel-installed"
want=$(cat pyproject.toml | sha256sum | cut -c1-16)-$DEV
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  log "installing retina-otel into $VENV"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  if [[ $DEV -eq 1 ]]; then
    "$VENV/bin/pip" install -q -e ".[dev]" 2>&1 | { grep -v "^WARNING: Location" || true; } >&2
  else
    "$VENV/bin/pip" install -q -e . 2>&1 | { grep -v "^WARNING: Location" || true; } >&2
  fi
  echo "$want" > "$stamp"
fi
"$VENV/bin/python" -c 'import bcc' 2>/dev/null || { log "ERROR: bcc is not importable from $VENV"; exit 1; }
log "ready: $VENV"
