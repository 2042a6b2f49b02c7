# Shared by the e2e scripts: paths, cache keys, logging. Sourced, not run.
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$E2E_DIR/../.." && pwd)
CACHE=${E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nvidia-driverd/e2e}
DRIVER_VERSION=550.54.14
BROKEN_VERSION=560.35.03 # same length: version strings are rewritten in place
SUITE=bookworm
MIRROR=${E2E_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${E2E_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# linux-image-rt-amd64: a second kernel (another flavour, so another
# vermagic) to update into; docker-registry: the guest's own registry;
# iproute2: tc, to slow the registry down for the power-cut scenario.
PACKAGES=systemd-sysv,udev,kmod,dbus,linux-image-amd64,linux-image-rt-amd64,docker-registry,iproute2
# What the modules are built with, inside a chroot of the same rootfs: the
# headers of exactly its two kernels (one mmdebstrap run resolves both from
# one archive state) and the suite's own compiler, whatever the host runs.
BUILD_PACKAGES=linux-headers-amd64,linux-headers-rt-amd64,gcc,make,libc6-dev
REGISTRY=127.0.0.1:5000 # the guest registry, on the guest's loopback
mkdir -p "$CACHE"

# E2E_LOG=FILE (make demo sets it): the builds' and boots' own output goes
# to FILE and the terminal gets only the log lines, one per step. The first
# script to source this opens the file; the scripts it runs inherit both.
if [ -n "${E2E_LOG:-}" ] && [ -z "${E2E_LOG_OPEN:-}" ]; then
	exec 3>&2 2>>"$E2E_LOG"
	export E2E_LOG_OPEN=1
fi
log() {
	local line
	line=$(printf '[e2e %s] %s' "$(date +%T)" "$*")
	[ -z "${E2E_LOG_OPEN:-}" ] || printf '%s\n' "$line" >&3
	printf '%s\n' "$line" >&2
}
die() { log "error: $*"; exit 1; }

# key STRING... prints a short hash of its arguments (and of the files
# among them), for cache file names.
key() {
	local a
	for a in "$@"; do
		# Contents only: the same inputs in another checkout give the same key.
		if [ -f "$a" ]; then sha256sum <"$a"; else printf '%s\n' "$a"; fi
	done | sha256sum | cut -c1-16
}

# The harness needs root: it installs packages, runs mmdebstrap, chroots
# into the guest's rootfs to build modules and makes disk images whose files
# belong to root. Not root: run again under sudo, keeping the Go toolchain
# and the cache of the user who asked.
need_root() {
	[ "$(id -u)" = 0 ] && return 0
	command -v sudo >/dev/null || die "this needs root (apt, mmdebstrap, chroot, mke2fs) and there is no sudo: run it as root"
	log "not root: running again under sudo"
	exec sudo env "PATH=$PATH" "HOME=$HOME" "E2E_CACHE=$CACHE" ${GOCACHE:+"GOCACHE=$GOCACHE"} ${GOMODCACHE:+"GOMODCACHE=$GOMODCACHE"} bash "$0" "$@"
}

# need PACKAGE...: install the host packages that are missing (without
# recommended ones: qemu's recommends pull in a desktop's worth).
# prune KEEP PATH...: remove each cached PATH but KEEP (builds for inputs
# that are gone, which would otherwise pile up a gigabyte at a time).
prune() {
	local keep=$1 p
	shift
	for p in "$@"; do
		[ "$p" = "$keep" ] || [ ! -e "$p" ] || rm -rf "$p"
	done
}

need() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	log "installing ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# in_root ROOT CMD...: run CMD chrooted in ROOT (an extracted rootfs) in a
# private mount namespace with its own /proc and the host's /dev, so
# nothing it mounts outlives it or shows on the host.
in_root() {
	local root=$1
	shift
	unshare -m --propagation private sh -euc '
		root=$1; shift
		mount -t proc proc "$root/proc"
		mount --rbind /dev "$root/dev"
		exec chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 "$@"
	' in_root "$root" "$@"
}

# build_binary builds the binary under test (static, like `make build`)
# into $CACHE/bin and prints its path.
build_binary() {
	mkdir -p "$CACHE/bin"
	(cd "$REPO" && CGO_ENABLED=0 go build -trimpath -o "$CACHE/bin/nvidia-driverd" ./cmd/nvidia-driverd)
	echo "$CACHE/bin/nvidia-driverd"
}
