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
REGISTRY=127.0.0.1:5000 # the guest registry, on the guest's loopback
mkdir -p "$CACHE"

log() { printf '[e2e %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# key STRING... prints a short hash of its arguments (and of the files
# among them), for cache file names.
key() {
	local a
	for a in "$@"; do
		if [ -f "$a" ]; then sha256sum "$a"; else printf '%s\n' "$a"; fi
	done | sha256sum | cut -c1-16
}

need() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	log "installing ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# build_binary builds the binary under test (static, like `make build`)
# into $CACHE/bin and prints its path.
build_binary() {
	mkdir -p "$CACHE/bin"
	(cd "$REPO" && CGO_ENABLED=0 go build -trimpath -o "$CACHE/bin/nvidia-driverd" ./cmd/nvidia-driverd)
	echo "$CACHE/bin/nvidia-driverd"
}
