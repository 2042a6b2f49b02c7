#!/usr/bin/env bash
# distribution.sh fetches the CNCF distribution registry server (Debian's
# docker-registry package, 2.8.x) so that tests can push to and pull from a
# real third-party registry rather than only go-containerregistry's own.
#
# Usage: distribution.sh [CACHE_DIR]
#
# CACHE_DIR defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/nvidia-driverd/distribution.
# The package is downloaded and unpacked, never installed: its postinst
# would start a system service listening on :5000 on every interface. Only
# the server binary is kept, as CACHE_DIR/docker-registry; later runs
# return at once. The binary's path is printed on stdout (export it as
# NVIDIA_DRIVERD_DISTRIBUTION). Progress goes to stderr.
set -euo pipefail

dir=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/nvidia-driverd/distribution}
bin=$dir/docker-registry

if [[ -x "$bin" ]]; then
	printf '%s\n' "$bin"
	exit 0
fi

log() { printf 'distribution: %s\n' "$*" >&2; }

. "$(dirname "$0")/../debfetch.sh"
need_tools "fetch the distribution registry" apt-get dpkg-deb

mkdir -p "$dir"
work=$(mktemp -d "$dir/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

deb=$(fetch_deb "$work" echo docker-registry)

dpkg-deb -x "$deb" "$work/root"
if [[ ! -x "$work/root/usr/bin/docker-registry" ]]; then
	log "no usr/bin/docker-registry in ${deb##*/}"
	exit 1
fi
# Rename into place last, so that an interrupted run leaves no binary that
# a later run would take for a finished one.
mv "$work/root/usr/bin/docker-registry" "$bin.tmp"
mv "$bin.tmp" "$bin"
log "$("$bin" --version 2>/dev/null || echo "docker-registry")"
printf '%s\n' "$bin"
