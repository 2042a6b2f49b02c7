#!/bin/bash
# assemble-tree.sh: lay out a driver tree in the image format
# (docs/image-format.md) from an extracted NVIDIA installer package and
# the kernel modules built from it.
#
#   assemble-tree.sh (--extract DIR | --sysroot DIR) --modules DIR --driver D \
#                    --kernel-release R --out DIR [--modprobe-conf FILE]
#
#   --extract DIR        the package extracted with `NVIDIA-Linux-*.run --extract-only`
#   --sysroot DIR        or a distribution's packages of driver D unpacked
#                        into DIR (dpkg-deb -x of Debian's libcuda1,
#                        nvidia-smi, firmware-nvidia-gsp, ...): libraries
#                        anywhere under usr/lib*, binaries in usr/bin or
#                        usr/sbin (symlinks followed inside DIR), firmware
#                        in lib/firmware/nvidia/D or usr/lib/firmware/nvidia/D
#   --modules DIR        the built nvidia*.ko (the installer's --kernel-install-path)
#   --driver D           driver version, e.g. 550.127.05
#   --kernel-release R   kernel the modules are for, e.g. 6.6.71-flatcar
#   --out DIR            the tree to create (absent or empty)
#   --modprobe-conf FILE copied to etc/modprobe.d/nvidia.conf
#
# The tree gets:
#   bin/                          nvidia-smi, nvidia-persistenced and, when
#                                 present, the other compute utilities
#   lib64/lib*.so.D               every library of the package versioned D
#                                 (top level only: 32/ holds the 32-bit ones),
#                                 with a relative SONAME link for each
#   lib/modules/R/video/*.ko      every .ko in --modules
#   firmware/nvidia/D/*.bin       the package's GSP firmware
#   etc/modprobe.d/nvidia.conf    with --modprobe-conf
#
# Libraries not versioned D (the bundled GLVND, EGL platform and Wayland
# libraries) are left out: a compute host does not need them and they
# would shadow the host's own. The modules' vermagic is not checked here:
# `nvidia-driverd publish` refuses a tree whose modules do not match R.
#
# Environment: REQUIRED_MODULES (default "nvidia nvidia-uvm nvidia-modeset
# nvidia-drm"), REQUIRED_BINARIES (default "nvidia-smi nvidia-persistenced").
# Exit status: 0 done, 1 an input is missing or wrong, 2 bad arguments.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

extract='' sysroot='' modules='' driver='' kernel='' out='' modprobe_conf=''
while (($#)); do
	case $1 in
	--extract) extract=${2:?}; shift 2 ;;
	--sysroot) sysroot=${2:?}; shift 2 ;;
	--modules) modules=${2:?}; shift 2 ;;
	--driver) driver=${2:?}; shift 2 ;;
	--kernel-release) kernel=${2:?}; shift 2 ;;
	--out) out=${2:?}; shift 2 ;;
	--modprobe-conf) modprobe_conf=${2:?}; shift 2 ;;
	-h | --help)
		sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
		exit 0
		;;
	*) usage_error "unknown argument $1 (see --help)" ;;
	esac
done
[[ -n $extract || -n $sysroot ]] && [[ -z $extract || -z $sysroot ]] ||
	usage_error "give one of --extract and --sysroot"
[[ -n $modules && -n $driver && -n $kernel && -n $out ]] ||
	usage_error "--extract or --sysroot, --modules, --driver, --kernel-release and --out are required"
valid_driver_version "$driver" || usage_error "--driver $driver: want a version such as 550.127.05"
[[ $kernel =~ ^[0-9A-Za-z._+-]+$ ]] || usage_error "--kernel-release $kernel: not a kernel release"
if [[ -n $sysroot ]]; then
	[[ -d $sysroot ]] || die "--sysroot $sysroot: not a directory"
	# The packages' files, gathered into the installer's flat layout, so
	# that both inputs take the one path below.
	extract=$(mktemp -d)
	trap 'rm -rf "$extract"' EXIT
	flatten_sysroot "$sysroot" "$driver" "$extract"
fi
[[ -d $extract ]] || die "--extract $extract: not a directory"
[[ -d $modules ]] || die "--modules $modules: not a directory"
if [[ -e $out ]] && [[ -n $(ls -A "$out") ]]; then
	die "--out $out exists and is not empty"
fi

read -r -a required_modules <<<"${REQUIRED_MODULES:-nvidia nvidia-uvm nvidia-modeset nvidia-drm}"
read -r -a required_binaries <<<"${REQUIRED_BINARIES:-nvidia-smi nvidia-persistenced}"
optional_binaries=(nvidia-debugdump nvidia-cuda-mps-control nvidia-cuda-mps-server nvidia-bug-report.sh)

for m in "${required_modules[@]}"; do
	[[ -f $modules/$m.ko ]] || die "$modules/$m.ko is missing (built modules: $(cd "$modules" && echo ./*.ko))"
done
for l in "libcuda.so.$driver" "libnvidia-ml.so.$driver"; do
	[[ -f $extract/$l ]] || die "$extract/$l is missing: is this the package of driver $driver?"
done
for b in "${required_binaries[@]}"; do
	[[ -f $extract/$b ]] || die "$extract/$b is missing"
done
command -v readelf >/dev/null || die "readelf (binutils) is needed to read library SONAMEs"

umask 022
mkdir -p "$out/bin" "$out/lib64" "$out/lib/modules/$kernel/video"

shopt -s nullglob
for ko in "$modules"/*.ko; do
	install -m 0644 "$ko" "$out/lib/modules/$kernel/video/"
done

for lib in "$extract"/lib*.so."$driver"; do
	[[ -f $lib && ! -L $lib ]] || continue
	base=${lib##*/}
	install -m 0755 "$lib" "$out/lib64/$base"
	soname=$(readelf -d "$lib" 2>/dev/null | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p' | head -n 1)
	if [[ -z $soname ]]; then
		log "warning: $base has no SONAME; no link made"
	elif [[ $soname != "$base" && $soname != */* && ! -e $out/lib64/$soname ]]; then
		ln -s "$base" "$out/lib64/$soname"
	fi
done

for b in "${required_binaries[@]}" "${optional_binaries[@]}"; do
	if [[ -f $extract/$b ]]; then install -m 0755 "$extract/$b" "$out/bin/$b"; fi
done

firmware=("$extract"/firmware/*.bin)
if ((${#firmware[@]})); then
	mkdir -p "$out/firmware/nvidia/$driver"
	install -m 0644 "${firmware[@]}" "$out/firmware/nvidia/$driver/"
else
	log "warning: $extract/firmware has no GSP firmware; GPUs that need it will not initialise"
fi

if [[ -n $modprobe_conf ]]; then
	mkdir -p "$out/etc/modprobe.d"
	install -m 0644 "$modprobe_conf" "$out/etc/modprobe.d/nvidia.conf"
fi

log "tree $out: $(find "$out" -type f | wc -l) files, $(find "$out" -type l | wc -l) links for driver $driver, kernel $kernel"
