#!/bin/bash
# in-container.sh: the compile step. build.sh runs it inside the Flatcar
# developer container of the release being built (systemd-nspawn), with
# /build bound to the work directory and /builder to this directory.
#
# It checks that the container is the expected release with the expected
# kernel, installs that kernel's sources (emerge coreos-sources, binary
# package only), configures them with the kernel's own .config, runs
# `make modules_prepare`, extracts the NVIDIA package and builds the
# kernel modules with nvidia-installer into /build/modules.
#
# Environment (set by build.sh): FLATCAR_VERSION, KERNEL_RELEASE (may be
# empty: then the container's only kernel is used), DRIVER, KERNEL_TYPE,
# RUN_FILE (file name under /build), JOBS; optionally PORTAGE_BINHOST.
# Output: /build/modules/*.ko, /build/extract (the extracted package),
# /build/kernel-release, /build/nvidia-installer.log.
set -euo pipefail

# shellcheck source=lib.sh
. /builder/lib.sh

: "${FLATCAR_VERSION:?}" "${DRIVER:?}" "${KERNEL_TYPE:?}" "${RUN_FILE:?}"
KERNEL_RELEASE=${KERNEL_RELEASE:-}
JOBS=${JOBS:-$(nproc)}

# The release: /usr/share/flatcar/release (older images:
# /usr/share/coreos/release) sets FLATCAR_RELEASE_VERSION.
release_file=''
for f in /usr/share/flatcar/release /usr/share/coreos/release; do
	if [[ -r $f ]]; then
		release_file=$f
		break
	fi
done
[[ -n $release_file ]] || die "no /usr/share/flatcar/release: not a Flatcar developer container"
# shellcheck disable=SC1090
. "$release_file"
[[ ${FLATCAR_RELEASE_VERSION:-} == "$FLATCAR_VERSION" ]] ||
	die "the developer container is Flatcar ${FLATCAR_RELEASE_VERSION:-unknown}, want $FLATCAR_VERSION"

# The kernel: the image ships /usr/lib/modules/<release>/build (releases
# before 3115.0.0 used /usr/lib64/modules) with the kernel's .config and
# Module.symvers.
moddir=''
for d in /usr/lib/modules /usr/lib64/modules; do
	if [[ -d $d && -n $(ls -A "$d") ]]; then
		moddir=$d
		break
	fi
done
[[ -n $moddir ]] || die "no kernel in /usr/lib/modules or /usr/lib64/modules"
mapfile -t kernels < <(find "$moddir" -mindepth 1 -maxdepth 1 -type d -printf '%f\n')
if [[ -z $KERNEL_RELEASE ]]; then
	((${#kernels[@]} == 1)) || die "$moddir holds ${#kernels[@]} kernels (${kernels[*]}); pass --kernel-release"
	KERNEL_RELEASE=${kernels[0]}
fi
build=$moddir/$KERNEL_RELEASE/build
[[ -f $build/.config ]] ||
	die "no $build/.config: Flatcar $FLATCAR_VERSION does not ship kernel $KERNEL_RELEASE (it has: ${kernels[*]})"
log "Flatcar $FLATCAR_VERSION, kernel $KERNEL_RELEASE, driver $DRIVER ($KERNEL_TYPE modules)"

# Kernel sources of exactly this release, as Flatcar's guide to building
# kernel modules does it; --usepkgonly so that a missing binary package
# fails instead of compiling something else.
if [[ -n ${PORTAGE_BINHOST:-} ]]; then export PORTAGE_BINHOST; fi
emerge-gitclone
emerge --getbinpkg --usepkgonly --verbose coreos-sources
src=$(readlink -f /usr/src/linux)
[[ -f $src/Makefile ]] || die "no kernel sources at /usr/src/linux after emerging coreos-sources"
cp "$build/.config" "$src/.config"
make -C "$src" olddefconfig
make -C "$src" -j"$JOBS" modules_prepare
got=$(cat "$src/include/config/kernel.release")
[[ $got == "$KERNEL_RELEASE" ]] || die "the sources in $src are kernel $got, want $KERNEL_RELEASE"
if [[ -f $build/Module.symvers ]]; then
	cp "$build/Module.symvers" "$src/Module.symvers"
else
	log "warning: no $build/Module.symvers: symbol versions of the kernel are unknown to modpost"
fi

# The package: extract it, then let the installer build the modules for
# the (not running) target kernel into /build/modules.
rm -rf /build/extract /build/modules /build/installer-tmp
mkdir -p /build/modules /build/installer-tmp
sh "/build/$RUN_FILE" --extract-only --target /build/extract
mapfile -t flags < <(installer_flags "$DRIVER" "$KERNEL_TYPE" "$KERNEL_RELEASE" "$src" /build/modules \
	/build/nvidia-installer.log /build/installer-tmp "$JOBS")
((${#flags[@]})) || die "no installer options"
log "nvidia-installer ${flags[*]}"
if ! (cd /build/extract && ./nvidia-installer "${flags[@]}"); then
	tail -n 40 /build/nvidia-installer.log >&2 || true
	die "nvidia-installer failed; its log is /build/nvidia-installer.log"
fi

# What the installer built must be plain modules for this kernel.
for ko in /build/modules/*.ko; do
	vermagic=$(modinfo -F vermagic "$ko")
	[[ ${vermagic%% *} == "$KERNEL_RELEASE" ]] || die "$ko has vermagic \"$vermagic\", want kernel $KERNEL_RELEASE"
	log "built ${ko##*/}: $vermagic"
done
printf '%s\n' "$KERNEL_RELEASE" >/build/kernel-release
