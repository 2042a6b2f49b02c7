#!/usr/bin/env bash
# make demo: lay out sample hosts and show what nvidia-driverd sees and
# would do on each. Nothing on this machine is changed: every command runs
# with --root pointing at a sample host tree.
set -euo pipefail
bin=${1:-bin/nvidia-driverd}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
go build -o "$work/mkhost" ./test/cmd/mkhost

bold= plain=
if [ -t 1 ]; then bold=$(tput bold 2>/dev/null || true) plain=$(tput sgr0 2>/dev/null || true); fi
while IFS=$'\t' read -r name about; do
	"$work/mkhost" "$name" "$work/$name"
	printf '\n%s== %s%s\n   %s\n\n' "$bold" "$name" "$plain" "$about"
	echo "\$ nvidia-driverd --root $work/$name status"
	"$bin" --root "$work/$name" status | sed 's/^/  /'
done < <("$work/mkhost" -list)

printf '\n%s== plan --json on the updated Flatcar host%s\n\n' "$bold" "$plain"
"$bin" --root "$work/flatcar-updated" plan --json

printf '\n%s== the effective configuration there, with a flag and an environment variable%s\n\n' "$bold" "$plain"
echo "\$ NVIDIA_DRIVERD_KEEP=3 nvidia-driverd --root $work/flatcar-updated --driver-version 560.35.03 config"
NVIDIA_DRIVERD_KEEP=3 "$bin" --root "$work/flatcar-updated" --driver-version 560.35.03 config
