#!/bin/bash
# publish.sh: push a driver tree as the image REF with nvidia-driverd.
#
#   publish.sh TREE OS_VERSION KERNEL_RELEASE DRIVER REF
#
# TREE is a tree made by assemble-tree.sh; REF is registry/repository:tag,
# the `image` field of `nvidia-driverd matrix --json`. nvidia-driverd
# checks every module's vermagic against KERNEL_RELEASE and refuses a tree
# that misses a configured module, so nothing wrong is published. The
# digest is printed on stdout.
#
# Environment: NVIDIA_DRIVERD, the binary (default: nvidia-driverd from
# PATH); NVIDIA_DRIVERD_* settings such as NVIDIA_DRIVERD_INSECURE_REGISTRIES;
# DOCKER_CONFIG for registry credentials; SOURCE_DATE_EPOCH for the
# entries' timestamp (default 0, so the same tree gives the same digest).
# Exit status: 0 published, 1 publishing failed, 2 bad arguments.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
	exit 0
fi
(($# == 5)) || usage_error "usage: publish.sh TREE OS_VERSION KERNEL_RELEASE DRIVER REF"
tree=$1 os_version=$2 kernel=$3 driver=$4 ref=$5
[[ -d $tree ]] || die "tree $tree: not a directory"
valid_flatcar_version "$os_version" || usage_error "OS_VERSION '$os_version': want a Flatcar version such as 4152.2.0"
valid_driver_version "$driver" || usage_error "DRIVER '$driver': want a version such as 550.127.05"
[[ $ref == */*:* ]] || usage_error "REF '$ref': want registry/repository:tag"

bin=${NVIDIA_DRIVERD:-nvidia-driverd}
log "publishing $tree as $ref (Flatcar $os_version, kernel $kernel, driver $driver)"
exec "$bin" publish --from "$tree" --os flatcar --os-version "$os_version" \
	--kernel-release "$kernel" --driver "$driver" "$ref"
