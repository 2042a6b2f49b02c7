#!/bin/bash
# build-real-driver.sh RELEASE [FLAVOUR]: NVIDIA's real driver for the guest kernel
# RELEASE, built from Debian 12's own packages inside the build root (a
# chroot of the guest's rootfs, build-root.sh: its headers for exactly this
# kernel, its gcc), never with the host's. Prints a directory holding:
#   tree/          the driver tree, laid out by deploy/builder/assemble-tree.sh
#                  (the release pipeline's script) from the unpacked packages
#   version        the driver version, e.g. 535.309.01
#   manifest.txt   packages with versions and sizes, build time, every file
# FLAVOUR is proprietary (the default: nvidia-kernel-dkms, non-free) or open
# (NVIDIA's open kernel modules: nvidia-open-kernel-dkms, contrib, whose
# bookworm version is older, 535.261.03: the user space is pinned to it).
# Cached by its inputs (the build root, this script, assemble-tree.sh); the
# first build needs Debian's mirrors (about 120 MB of packages) and takes
# two to three minutes on two cores.
#
# Packages (bookworm non-free; the NVIDIA ones pinned to the module's
# upstream version, since libraries and module must match):
#   nvidia-kernel-dkms        the proprietary module source with its Kbuild
#                             (only unpacked: its postinst would run dkms)
#   libcuda1                  libcuda.so: the CUDA driver API
#   libnvidia-pkcs11-openssl3 what libcuda1 depends on (confidential computing)
#   libnvidia-ml1             libnvidia-ml.so: NVML, what nvidia-smi, the
#                             device plugin and DCGM talk to
#   libnvidia-ptxjitcompiler1 PTX JIT, which libcuda dlopens for PTX kernels
#   libnvidia-nvvm4           NVVM, for CUDA's JIT link-time optimisation
#   libnvidia-cfg1            libnvidia-cfg, dlopened by nvidia-persistenced
#   nvidia-smi                NVIDIA's nvidia-smi
#   nvidia-persistenced       keeps the driver initialised between clients
#   nvidia-cuda-mps           the MPS control daemon and server
#   firmware-nvidia-gsp       GSP firmware (gsp_tu10x.bin, gsp_ga10x.bin),
#                             which Turing and later GPUs load at probe
# NVIDIA's 535 refuses PREEMPT_RT kernels, so only the standard kernel gets
# a real tree.
. "$(dirname "$0")/lib.sh"
[ $# = 1 ] || [ $# = 2 ] || die "usage: build-real-driver.sh RELEASE [proprietary|open]"
need_root "$@"
release=$1 flavour=${2:-proprietary}
case $flavour in
proprietary) dkms_pkg=nvidia-kernel-dkms ;;
open) dkms_pkg=nvidia-open-kernel-dkms ;;
*) die "flavour $flavour: want proprietary or open" ;;
esac
root=$("$E2E_DIR/build-root.sh")
[ -d "$root/usr/src/linux-headers-$release" ] || die "the guest rootfs has no headers for $release"
! grep -q '^CONFIG_PREEMPT_RT=y' "$root/boot/config-$release" 2>/dev/null ||
	die "$release is a PREEMPT_RT kernel, which NVIDIA's 535 driver refuses"
k=$(key "$release" "$flavour" "from ${root##*/}" "$E2E_DIR/build-real-driver.sh" "$REPO/deploy/builder/assemble-tree.sh" "$REPO/deploy/builder/lib.sh" v1)
out=$CACHE/real-$flavour-$k
if [ -e "$out/.complete" ]; then
	echo "$out"
	exit 0
fi
t0=$(date +%s)
rm -rf "$out"
mkdir -p "$out"
work=/tmp/real-driver
rm -rf "${root:?}$work"
mkdir -p "$root$work/debs"
chmod 0777 "$root$work/debs" # apt downloads as _apt
log "real $flavour driver for $release: resolving Debian's NVIDIA packages (log: $out/build.log)"
exec 4>>"$out/build.log"

# apt in the build root, with the components NVIDIA's packages live in.
cat >"$root/etc/apt/sources.list.d/e2e-nvidia.list" <<EOF
deb $MIRROR $SUITE main contrib non-free non-free-firmware
deb $MIRROR $SUITE-updates main contrib non-free non-free-firmware
deb $SECURITY_MIRROR $SUITE-security main contrib non-free non-free-firmware
EOF
cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
in_root "$root" apt-get -q -o Acquire::Retries=3 update >&4 2>&1 || die "apt-get update in the build root failed (see $out/build.log)"
dkms=$(in_root "$root" apt-cache policy $dkms_pkg | awk '/Candidate:/ {print $2}')
[ -n "$dkms" ] && [ "$dkms" != "(none)" ] || die "no $dkms_pkg in $SUITE"
driver=${dkms%%-*}
# pinned PACKAGE: PACKAGE=<the newest Debian version of upstream $driver>.
pinned() {
	local v
	v=$(in_root "$root" apt-cache madison "$1" | awk -F' *[|] *' -v u="$driver" '$2 ~ "^" u "-" {print $2; exit}')
	[ -n "$v" ] || die "$1 $driver is not in the archive: libraries and module must be the same version"
	echo "$1=$v"
}
specs=("$dkms_pkg=$dkms")
for p in libcuda1 libnvidia-pkcs11-openssl3 libnvidia-ml1 libnvidia-ptxjitcompiler1 libnvidia-nvvm4 libnvidia-cfg1 nvidia-smi nvidia-cuda-mps firmware-nvidia-gsp; do
	specs+=("$(pinned "$p")")
done
specs+=(nvidia-persistenced) # its own source package, version-independent
log "downloading ${specs[*]}"
in_root "$root" sh -c 'cd "$1" && shift && apt-get -q -o Acquire::Retries=3 download "$@"' dl "$work/debs" "${specs[@]}" >&4 2>&1 ||
	die "apt-get download failed (see $out/build.log)"

# The module source, built as Debian's dkms.conf builds it: NVIDIA's
# Makefile hands over to the kernel's Kbuild for KERNEL_UNAME.
dpkg-deb -x "$root$work"/debs/${dkms_pkg}_*.deb "$root$work/src"
src=$(cd "$root$work/src/usr/src" && ls -d nvidia-current*-"$driver" | head -n 1)
[ -n "$src" ] || die "no module source in $dkms_pkg $dkms"
# bookworm's 6.1 kernels took pci_resize_resource()'s fourth argument
# (exclude_bars) from upstream; the open 535.261.03 source predates it and
# would not compile. Pass 0, as upstream's later drivers do, only when the
# headers have the new signature and the source the old call.
pci_h=$root$(readlink "$root/lib/modules/$release/source")/include/linux/pci.h
nv_pci=$root$work/src/usr/src/$src/nvidia/nv-pci.c
if [ -f "$pci_h" ] && [ -f "$nv_pci" ] &&
	grep -A1 'pci_resize_resource(struct pci_dev \*dev, int i, int size,' "$pci_h" | grep -q exclude_bars &&
	grep -q 'pci_resize_resource(pci_dev, NV_GPU_BAR1, requested_size);' "$nv_pci"; then
	log "patching nvidia/nv-pci.c for pci_resize_resource(..., exclude_bars)"
	sed -i 's/pci_resize_resource(pci_dev, NV_GPU_BAR1, requested_size);/pci_resize_resource(pci_dev, NV_GPU_BAR1, requested_size, 0);/' "$nv_pci"
fi
log "building nvidia $driver $flavour modules for $release (Kbuild in the build root)"
b0=$(date +%s)
in_root "$root" sh -c 'cd "$1" && exec make -j"$2" modules KERNEL_UNAME="$3"' make \
	"$work/src/usr/src/$src" "$(nproc)" "$release" >&4 2>&1 ||
	die "building the modules failed: the end of $out/build.log: $(tail -n 5 "$out/build.log")"
build_s=$(($(date +%s) - b0))
mkdir -p "$out/modules"
for ko in "$root$work/src/usr/src/$src"/*.ko; do
	n=${ko##*/}
	in_root "$root" strip --strip-debug -o "$work/$n" "$work/src/usr/src/$src/$n"
	install -m 0644 "$root$work/$n" "$out/modules/$n"
	magic=$(tr '\0' '\n' <"$out/modules/$n" | sed -n 's/^vermagic=//p')
	case $magic in "$release "*) ;; *) die "$n: vermagic '$magic', not $release" ;; esac
done

# The user space: every package but the module source, unpacked as dpkg
# would (no maintainer scripts), then laid out by the release's script.
mkdir -p "$out/sysroot"
for deb in "$root$work"/debs/*.deb; do
	case ${deb##*/} in ${dkms_pkg}_*) continue ;; esac
	dpkg-deb -x "$deb" "$out/sysroot"
done
bash "$REPO/deploy/builder/assemble-tree.sh" --sysroot "$out/sysroot" --modules "$out/modules" \
	--driver "$driver" --kernel-release "$release" --out "$out/tree" >&4 2>&1 ||
	die "assemble-tree.sh failed (see $out/build.log)"
echo "$driver" >"$out/version"
{
	echo "kernel_release=$release"
	echo "flavour=$flavour"
	echo "driver_version=$driver"
	echo "module_build_seconds=$build_s jobs=$(nproc)"
	echo "# packages: name version bytes"
	for deb in "$root$work"/debs/*.deb; do
		echo "$(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version) $(stat -c %s "$deb")"
	done
	echo "# tree: $(find "$out/tree" -type f | wc -l) files, $(du -sb "$out/tree" | cut -f1) bytes"
	(cd "$out/tree" && find . -type f -printf '%P %s\n' | sort)
} >"$out/manifest.txt"
rm -rf "$out/sysroot" "${root:?}$work"
touch "$out/.complete"
prune "$out" "$CACHE"/real-"$flavour"-*
log "real $flavour driver $driver for $release in $(($(date +%s) - t0)) s (modules built in $build_s s): $out"
echo "$out"
