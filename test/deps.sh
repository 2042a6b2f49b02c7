#!/usr/bin/env bash
# Installs the Debian packages the tests need: gcc and objcopy build
# .ko-shaped ELF fixtures, xz and zstd compress them like distributions do,
# apt/dpkg fetch a real distribution kernel module, dbus (dbus-daemon)
# carries pkg/systemd's D-Bus tests.
set -euo pipefail
pkgs=(gcc binutils libc6-dev xz-utils zstd dpkg ca-certificates make git dbus)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	sudo=()
	if [ "$(id -u)" -ne 0 ]; then
		command -v sudo >/dev/null || { echo "deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
		sudo=(sudo)
	fi
	echo "deps: installing ${missing[*]}" >&2
	"${sudo[@]}" apt-get update -qq
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
