# shellcheck shell=bash
# Functions shared by build.sh, in-container.sh and assemble-tree.sh.
# Sourced, never run. Everything here is pure (no network, no root) so
# that builder_test.go can call it directly.

log() { printf 'builder: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}
usage_error() {
	log "$*"
	exit 2
}

valid_channel() {
	case $1 in
	stable | beta | alpha | lts) return 0 ;;
	*) return 1 ;;
	esac
}
valid_flatcar_version() { [[ $1 =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; }
valid_driver_version() { [[ $1 =~ ^[0-9]+\.[0-9]+(\.[0-9]+)?$ ]]; }
valid_sha256() { [[ $1 =~ ^[0-9a-f]{64}$ ]]; }

driver_major() { printf '%s\n' "${1%%.*}"; }

# release_base CHANNEL: the directory tree Flatcar publishes releases in.
release_base() { printf 'https://%s.release.flatcar-linux.net\n' "$1"; }

# release_url BASE VERSION FILE [BOARD]: a file of one release.
release_url() { printf '%s/%s/%s/%s\n' "$1" "${4:-amd64-usr}" "$2" "$3"; }

# nvidia_run_name DRIVER: the installer's file name (x86_64 only).
nvidia_run_name() { printf 'NVIDIA-Linux-x86_64-%s.run\n' "$1"; }

# nvidia_url DRIVER: NVIDIA's data-center download of the installer.
nvidia_url() { printf 'https://us.download.nvidia.com/tesla/%s/%s\n' "$1" "$(nvidia_run_name "$1")"; }

# default_kernel_type DRIVER: the installer's own default since 560 is
# the open module; before, the proprietary one.
default_kernel_type() {
	if (($(driver_major "$1") >= 560)); then echo open; else echo proprietary; fi
}

# checksum_for FILE NAME: the SHA-256 that FILE (sha256sum format, '#'
# comments allowed) lists for NAME. Fails when NAME is not listed exactly
# once with a well-formed digest.
checksum_for() {
	local file=$1 name=$2 sums
	[[ -r $file ]] || {
		log "checksum file $file: not readable"
		return 1
	}
	sums=$(awk -v n="$name" '!/^[[:space:]]*#/ && NF == 2 && ($2 == n || $2 == "*" n) { print $1 }' "$file")
	if [[ -z $sums ]]; then
		log "checksum file $file lists no SHA-256 for $name"
		return 1
	fi
	if [[ $sums == *$'\n'* ]]; then
		log "checksum file $file lists $name more than once"
		return 1
	fi
	sums=${sums,,}
	valid_sha256 "$sums" || {
		log "checksum file $file: $sums is not a SHA-256"
		return 1
	}
	printf '%s\n' "$sums"
}

# verify_sha256 FILE HEX
verify_sha256() {
	local got
	got=$(sha256sum "$1" | awk '{print $1}')
	if [[ $got != "$2" ]]; then
		log "$1: SHA-256 $got, want $2"
		return 1
	fi
}

# installer_flags DRIVER KERNEL_TYPE KERNEL_RELEASE SOURCE_DIR INSTALL_DIR LOG TMPDIR JOBS
# prints the nvidia-installer options, one per line. Every option is in
# nvidia-installer's option table (option_table.h) except
# --kernel-module-type, which 560 and later have. The installer runs in a
# throw-away developer container, so only its kernel module output is
# used; user-space files are taken from the extracted package instead.
installer_flags() {
	local driver=$1 type=$2 kernel=$3 src=$4 dest=$5 logfile=$6 tmp=$7 jobs=$8 major
	major=$(driver_major "$driver")
	# The original's options: silent (here spelt --ui=none --no-questions),
	# no precompiled interface, the kernel source path, no check for
	# alternate installs, no kernel module source, no OpenGL files, no
	# distro scripts, an install path and a log file.
	printf '%s\n' \
		--ui=none \
		--no-questions \
		--accept-license \
		--no-precompiled-interface \
		"--kernel-name=$kernel" \
		"--kernel-source-path=$src" \
		"--kernel-install-path=$dest" \
		--no-check-for-alternate-installs \
		--no-kernel-module-source \
		--no-opengl-files \
		--no-distro-scripts \
		"--log-file-name=$logfile" \
		"--tmpdir=$tmp" \
		"--concurrency-level=$jobs" \
		--skip-depmod \
		--no-systemd \
		--no-nouveau-check \
		--no-x-check \
		--no-rpms \
		--no-backup \
		--no-nvidia-modprobe
	case $type in
	open)
		if ((major >= 560)); then
			echo --kernel-module-type=open
		elif ((major >= 515)); then
			echo --kernel-module-build-directory=kernel-open
		else
			log "driver $driver has no open kernel module (515 and later have)"
			return 1
		fi
		;;
	proprietary)
		if ((major >= 560)); then echo --kernel-module-type=proprietary; fi
		;;
	*)
		log "kernel module type $type: want open or proprietary"
		return 1
		;;
	esac
}

# in_sysroot ROOT PATH: PATH (inside ROOT) with its symlinks followed the
# way they would be were ROOT the root: absolute targets stay under ROOT.
# Prints ROOT-prefixed path; fails after 40 links or on a dangling one.
in_sysroot() {
	local root=$1 p=$2 n=0 t
	while [[ -L $root$p ]]; do
		((++n <= 40)) || return 1
		t=$(readlink "$root$p")
		if [[ $t == /* ]]; then p=$t; else p=$(dirname "$p")/$t; fi
	done
	[[ -e $root$p ]] || return 1
	printf '%s%s\n' "$root" "$p"
}

# flatten_sysroot ROOT DRIVER OUT: the files of driver DRIVER that a
# distribution's packages unpacked into ROOT, copied into OUT in the layout
# of an extracted NVIDIA installer: lib*.so.DRIVER (regular files, from
# anywhere under usr/lib*), the binaries of usr/bin and usr/sbin named
# nvidia-* (their links followed inside ROOT) and, for names not found
# there, of usr/lib/nvidia/current (where Debian's packages put what its
# alternatives link into usr/bin when a maintainer script runs, which
# unpacking does not), and firmware/*.bin.
flatten_sysroot() {
	local root=$1 driver=$2 out=$3 f b real
	mkdir -p "$out/firmware"
	while IFS= read -r -d '' f; do
		b=${f##*/}
		[[ -e $out/$b ]] || cp -p "$f" "$out/$b"
	done < <(find "$root"/usr/lib* -type f -name "lib*.so.$driver" -print0 2>/dev/null)
	for f in "$root"/usr/bin/nvidia-* "$root"/usr/sbin/nvidia-* "$root"/usr/lib/nvidia/current/nvidia-*; do
		[[ -e $f || -L $f ]] || continue
		b=${f##*/}
		[[ ! -e $out/$b ]] || continue
		real=$(in_sysroot "$root" "${f#"$root"}") || {
			log "warning: ${f#"$root"} leads nowhere inside $root; left out"
			continue
		}
		[[ -f $real ]] && cp -p "$real" "$out/$b"
	done
	for f in "$root"/lib/firmware/nvidia/"$driver"/*.bin "$root"/usr/lib/firmware/nvidia/"$driver"/*.bin; do
		[[ -f $f ]] && cp -p "$f" "$out/firmware/"
	done
	return 0
}
