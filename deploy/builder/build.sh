#!/bin/bash
# build.sh: build the NVIDIA driver image for one Flatcar release and
# publish it. See README.md in this directory.
#
#   build.sh --channel C --os-version V --driver D (--sha256 HEX | --sha256-file FILE)
#            [options] REF
#
# Steps:
#   1. download the release's developer container and its detached
#      signature; verify the signature with the Flatcar image signing key
#   2. download NVIDIA-Linux-x86_64-D.run (or take --run-file) and check
#      its SHA-256 against --sha256 / --sha256-file: there is no default
#   3. run in-container.sh in the developer container (systemd-nspawn):
#      kernel sources, modules_prepare, nvidia-installer
#   4. assemble-tree.sh: lay the modules, libraries, binaries and firmware
#      out as docs/image-format.md describes
#   5. publish.sh: `nvidia-driverd publish` to REF (registry/repository:tag)
#
# Options:
#   --channel C                  stable, beta, alpha or lts
#   --os-version V               Flatcar version, e.g. 4152.2.0
#   --kernel-release R           kernel the release runs, e.g. 6.6.71-flatcar;
#                                checked against the container (default: the
#                                container's only kernel)
#   --driver D                   NVIDIA driver version, e.g. 550.127.05
#   --sha256 HEX                 SHA-256 of the NVIDIA .run
#   --sha256-file FILE           sha256sum-format file listing the .run
#   --kernel-type T              open or proprietary (default: open from 560 on,
#                                proprietary before, as the installer does)
#   --nvidia-url URL             where the .run is downloaded from
#                                (default https://us.download.nvidia.com/tesla/D/NVIDIA-Linux-x86_64-D.run)
#   --run-file FILE              a local .run instead of downloading
#   --release-base URL           Flatcar release server (default https://C.release.flatcar-linux.net)
#   --flatcar-key FILE           Flatcar image signing key, ASCII-armoured (default: downloaded
#                                from https://www.flatcar.org/security/image-signing-key/)
#   --flatcar-key-fingerprint F  primary key fingerprint the signature must come from
#   --binhost URL                PORTAGE_BINHOST inside the container (default: its own)
#   --modprobe-conf FILE         shipped as etc/modprobe.d/nvidia.conf
#   --nvidia-driverd PATH        the nvidia-driverd binary (default: from PATH)
#   --workdir DIR                scratch space, about 10 GB (default: a new dir under /var/tmp)
#   --keep-workdir               leave the scratch space for inspection
#   --tree-only DIR              stop after step 4 and move the tree to DIR; no REF
#   --jobs N                     parallel compile jobs (default: nproc)
#   --dry-run                    print what would be done and exit
#   -h, --help
#
# Needs root (systemd-nspawn, loop devices), curl, gpg/gpgv, bzip2,
# sha256sum, readelf and systemd-nspawn. Registry credentials come from the
# Docker config ($DOCKER_CONFIG), as for nvidia-driverd.
# Exit status: 0 published, 1 a step failed, 2 bad arguments.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

channel='' os_version='' kernel='' driver='' sha256='' sha256_file='' kernel_type=''
nvidia_url_='' run_file='' release_base_='' flatcar_key='' key_fpr='' binhost=''
modprobe_conf='' nvidia_driverd=${NVIDIA_DRIVERD:-nvidia-driverd} workdir='' keep=0
tree_only='' jobs=$(nproc) dry_run=0 ref=''
while (($#)); do
	case $1 in
	--channel) channel=${2:?}; shift 2 ;;
	--os-version) os_version=${2:?}; shift 2 ;;
	--kernel-release) kernel=${2:?}; shift 2 ;;
	--driver) driver=${2:?}; shift 2 ;;
	--sha256) sha256=${2:?}; shift 2 ;;
	--sha256-file) sha256_file=${2:?}; shift 2 ;;
	--kernel-type) kernel_type=${2:?}; shift 2 ;;
	--nvidia-url) nvidia_url_=${2:?}; shift 2 ;;
	--run-file) run_file=${2:?}; shift 2 ;;
	--release-base) release_base_=${2:?}; shift 2 ;;
	--flatcar-key) flatcar_key=${2:?}; shift 2 ;;
	--flatcar-key-fingerprint) key_fpr=${2:?}; shift 2 ;;
	--binhost) binhost=${2:?}; shift 2 ;;
	--modprobe-conf) modprobe_conf=${2:?}; shift 2 ;;
	--nvidia-driverd) nvidia_driverd=${2:?}; shift 2 ;;
	--workdir) workdir=${2:?}; shift 2 ;;
	--keep-workdir) keep=1; shift ;;
	--tree-only) tree_only=${2:?}; shift 2 ;;
	--jobs) jobs=${2:?}; shift 2 ;;
	--dry-run) dry_run=1; shift ;;
	-h | --help)
		sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
		exit 0
		;;
	-*) usage_error "unknown option $1 (see --help)" ;;
	*)
		[[ -z $ref ]] || usage_error "more than one REF: $ref, $1"
		ref=$1
		shift
		;;
	esac
done

# Arguments.
valid_channel "$channel" || usage_error "--channel '$channel': want stable, beta, alpha or lts"
valid_flatcar_version "$os_version" || usage_error "--os-version '$os_version': want a Flatcar version such as 4152.2.0"
valid_driver_version "$driver" || usage_error "--driver '$driver': want a version such as 550.127.05"
[[ -z $kernel || $kernel =~ ^[0-9A-Za-z._+-]+$ ]] || usage_error "--kernel-release '$kernel': not a kernel release"
[[ $jobs =~ ^[1-9][0-9]*$ ]] || usage_error "--jobs '$jobs': want a positive number"
kernel_type=${kernel_type:-$(default_kernel_type "$driver")}
[[ $kernel_type == open || $kernel_type == proprietary ]] || usage_error "--kernel-type '$kernel_type': want open or proprietary"
if [[ -n $tree_only ]]; then
	[[ -z $ref ]] || usage_error "--tree-only takes no REF"
else
	[[ -n $ref ]] || usage_error "REF (registry/repository:tag) is required, or --tree-only DIR"
	[[ $ref == */*:* ]] || usage_error "REF '$ref': want registry/repository:tag"
fi
run_name=$(nvidia_run_name "$driver")
if [[ -n $sha256 && -n $sha256_file ]]; then
	usage_error "give --sha256 or --sha256-file, not both"
elif [[ -n $sha256_file ]]; then
	sha256=$(checksum_for "$sha256_file" "$run_name") || usage_error "no checksum for $run_name"
elif [[ -n $sha256 ]]; then
	sha256=${sha256,,}
	valid_sha256 "$sha256" || usage_error "--sha256 '$sha256': want 64 hex digits"
else
	usage_error "--sha256 or --sha256-file is required: the NVIDIA package is never used unchecked"
fi
key_fpr=${key_fpr//[[:space:]]/}
key_fpr=${key_fpr^^}
[[ -z $key_fpr || $key_fpr =~ ^[0-9A-F]{40}$ ]] || usage_error "--flatcar-key-fingerprint: want 40 hex digits"
installer_flags "$driver" "$kernel_type" "${kernel:-KERNEL}" /usr/src/linux /build/modules \
	/build/nvidia-installer.log /build/installer-tmp "$jobs" >/dev/null || usage_error "driver $driver cannot be built as $kernel_type"

base=${release_base_:-$(release_base "$channel")}
devcontainer=$(release_url "$base" "$os_version" flatcar_developer_container.bin.bz2)
key_url=https://www.flatcar.org/security/image-signing-key/Flatcar_Image_Signing_Key.asc
nvidia_src=${run_file:-${nvidia_url_:-$(nvidia_url "$driver")}}

if ((dry_run)); then
	cat <<EOF
flatcar release:     $channel $os_version${kernel:+ (kernel $kernel)}
developer container: $devcontainer
signature:           $devcontainer.sig
signing key:         ${flatcar_key:-$key_url}${key_fpr:+ (fingerprint $key_fpr)}
nvidia package:      $nvidia_src
sha256:              $sha256
kernel modules:      $kernel_type
installer options:   $(installer_flags "$driver" "$kernel_type" "${kernel:-<from container>}" /usr/src/linux /build/modules /build/nvidia-installer.log /build/installer-tmp "$jobs" | tr '\n' ' ')
result:              ${tree_only:-$ref}
EOF
	exit 0
fi

# Environment.
((EUID == 0)) || die "run as root: systemd-nspawn mounts the developer container's disk image"
for tool in curl gpg gpgv bzip2 sha256sum readelf systemd-nspawn; do
	command -v "$tool" >/dev/null || die "$tool is not installed"
done
if [[ -z $tree_only ]]; then
	command -v "$nvidia_driverd" >/dev/null || die "nvidia-driverd ($nvidia_driverd) not found; pass --nvidia-driverd"
fi

if [[ -z $workdir ]]; then
	workdir=$(mktemp -d /var/tmp/nvidia-builder.XXXXXX)
else
	mkdir -p "$workdir"
fi
workdir=$(cd "$workdir" && pwd)
cleanup() {
	if ((keep)); then
		log "work directory kept: $workdir"
	else
		rm -rf "$workdir"
	fi
}
trap cleanup EXIT
mkdir -p "$workdir/build" "$workdir/src" "$workdir/tmp" "$workdir/gnupg"
chmod 700 "$workdir/gnupg"

fetch() { curl --fail --silent --show-error --location --retry 5 --retry-delay 2 --connect-timeout 30 -o "$2" "$1"; }

# 1. The developer container, verified with the release's signature.
log "downloading $devcontainer"
fetch "$devcontainer" "$workdir/devcontainer.bin.bz2"
fetch "$devcontainer.sig" "$workdir/devcontainer.bin.bz2.sig"
if [[ -z $flatcar_key ]]; then
	flatcar_key=$workdir/flatcar-key.asc
	fetch "$key_url" "$flatcar_key"
fi
GNUPGHOME=$workdir/gnupg gpg --batch --quiet --dearmor <"$flatcar_key" >"$workdir/flatcar-key.gpg"
status=$(gpgv --status-fd 1 --keyring "$workdir/flatcar-key.gpg" \
	"$workdir/devcontainer.bin.bz2.sig" "$workdir/devcontainer.bin.bz2" 2>"$workdir/gpgv.log") || {
	cat "$workdir/gpgv.log" >&2
	die "the signature of $devcontainer does not verify"
}
# VALIDSIG <signing key fpr> ... <primary key fpr>
primary=$(awk '$2 == "VALIDSIG" { print $NF }' <<<"$status")
[[ -n $primary ]] || die "gpgv gave no VALIDSIG for $devcontainer"
if [[ -n $key_fpr && $primary != "$key_fpr" ]]; then
	die "$devcontainer is signed by key $primary, want $key_fpr"
fi
if [[ -n $key_fpr ]]; then
	log "developer container signed by $primary (pinned)"
else
	log "developer container signed by $primary (key not pinned: pass --flatcar-key-fingerprint)"
fi
# cp reads /dev/stdin and keeps the zeros of the 6 GB image sparse.
# shellcheck disable=SC2216
bzip2 -dc "$workdir/devcontainer.bin.bz2" | cp --sparse=always /dev/stdin "$workdir/devcontainer.bin"
rm -f "$workdir/devcontainer.bin.bz2"

# 2. The NVIDIA package, checked against the pinned SHA-256.
if [[ -n $run_file ]]; then
	cp "$run_file" "$workdir/build/$run_name"
else
	log "downloading $nvidia_src"
	fetch "$nvidia_src" "$workdir/build/$run_name"
fi
verify_sha256 "$workdir/build/$run_name" "$sha256" || die "$nvidia_src does not have the pinned SHA-256"
log "$run_name: SHA-256 $sha256 verified"

# 3. The compile, inside the developer container. /usr/src and /var/tmp
# live in the work directory: the image has little free space.
nspawn_env=(--setenv="FLATCAR_VERSION=$os_version" --setenv="KERNEL_RELEASE=$kernel" --setenv="DRIVER=$driver"
	--setenv="KERNEL_TYPE=$kernel_type" --setenv="RUN_FILE=$run_name" --setenv="JOBS=$jobs")
if [[ -n $binhost ]]; then nspawn_env+=(--setenv="PORTAGE_BINHOST=$binhost"); fi
systemd-nspawn --quiet --console=pipe \
	--image="$workdir/devcontainer.bin" \
	--machine="nvidia-builder-$$" \
	--bind="$workdir/build:/build" \
	--bind="$workdir/src:/usr/src" \
	--bind="$workdir/tmp:/var/tmp" \
	--bind-ro="$here:/builder" \
	"${nspawn_env[@]}" \
	/bin/bash /builder/in-container.sh
kernel=$(cat "$workdir/build/kernel-release")

# 4. The tree.
tree=$workdir/tree
assemble=("$here/assemble-tree.sh" --extract "$workdir/build/extract" --modules "$workdir/build/modules"
	--driver "$driver" --kernel-release "$kernel" --out "$tree")
if [[ -n $modprobe_conf ]]; then assemble+=(--modprobe-conf "$modprobe_conf"); fi
"${assemble[@]}"
if [[ -n $tree_only ]]; then
	[[ ! -e $tree_only ]] || die "--tree-only $tree_only exists"
	mv "$tree" "$tree_only"
	log "tree for Flatcar $os_version, kernel $kernel, driver $driver: $tree_only"
	exit 0
fi

# 5. The image.
NVIDIA_DRIVERD=$nvidia_driverd "$here/publish.sh" "$tree" "$os_version" "$kernel" "$driver" "$ref"
