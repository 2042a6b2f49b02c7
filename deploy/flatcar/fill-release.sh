#!/usr/bin/env bash
# fill-release.sh BASE_URL [ARCH] [RELEASE_DIR] [OUT]
#
# Writes OUT (default RELEASE_DIR/nvidia-driverd.bu): deploy/flatcar's
# Butane config with the binary's URL (BASE_URL/nvidia-driverd-linux-ARCH)
# and its verification hash from RELEASE_DIR/SHA256SUMS, as `make release`
# left them. ARCH is amd64 (default) or arm64; RELEASE_DIR defaults to
# bin/release. Translate OUT with `butane --strict`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
base=${1:?usage: fill-release.sh BASE_URL [ARCH] [RELEASE_DIR] [OUT]}
arch=${2:-amd64}
dir=${3:-bin/release}
out=${4:-$dir/nvidia-driverd.bu}
case "$arch" in amd64 | arm64) ;; *) echo "fill-release.sh: ARCH $arch: want amd64 or arm64" >&2; exit 2 ;; esac
case "$base" in https://*) ;; *) echo "fill-release.sh: BASE_URL $base: want an https:// URL (Ignition fetches the binary)" >&2; exit 2 ;; esac
file=nvidia-driverd-linux-$arch
sum=$(awk -v f="$file" '$2 == f { print $1 }' "$dir/SHA256SUMS")
if ! [[ $sum =~ ^[0-9a-f]{64}$ ]]; then
	echo "fill-release.sh: $dir/SHA256SUMS has no sum for $file (run make release)" >&2
	exit 1
fi
url=${base%/}/$file
tmp=$(mktemp "$out.XXXXXX")
trap 'rm -f "$tmp"' EXIT
sed -e "s|^\( *source: \)https://example.com/REPLACE-ME/nvidia-driverd$|\1$url|" \
	-e "s|^\( *hash: \)sha256-0\{64\}$|\1sha256-$sum|" "$here/nvidia-driverd.bu" >"$tmp"
if ! grep -q "source: $url\$" "$tmp" || ! grep -q "hash: sha256-$sum\$" "$tmp"; then
	echo "fill-release.sh: $here/nvidia-driverd.bu has no placeholder source and hash to fill" >&2
	exit 1
fi
mv "$tmp" "$out"
trap - EXIT
echo "$out: source $url, hash sha256-$sum"
