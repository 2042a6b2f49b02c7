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

printf '\n%s== install end to end on the updated Flatcar host%s\n' "$bold" "$plain"
printf '   publish a driver image for 3815.2.0 into an OCI layout (no Docker, no registry needed),\n'
printf '   then install it: fetched, verified, unpacked, checked against the kernel, switched atomically\n\n'
h=$work/flatcar-updated
"$work/mkhost" -driver-tree 550.54.14 6.1.77-flatcar "6.1.77-flatcar SMP preempt mod_unload" "$work/tree"
echo "\$ nvidia-driverd publish --from tree --os flatcar --os-version 3815.2.0 --kernel-release 6.1.77-flatcar --oci-layout $h/media/usb 3815.2.0-550.54.14"
"$bin" --root "$h" --log-level warn publish --from "$work/tree" --os flatcar --os-version 3815.2.0 \
	--kernel-release 6.1.77-flatcar --oci-layout "$h/media/usb" 3815.2.0-550.54.14
echo "\$ nvidia-driverd --root $h --source oci-layout:/media/usb install --no-activate"
"$bin" --root "$h" --source oci-layout:/media/usb install --no-activate
echo "\$ nvidia-driverd --root $h status"
"$bin" --root "$h" status | sed 's/^/  /'
echo "\$ ls -l $h/opt/nvidia"
ls -l "$h/opt/nvidia" | sed 's/^/  /'
echo "\$ nvidia-driverd --root $h rollback"
"$bin" --root "$h" rollback
