#!/bin/bash
# run-e2e.sh [SCENARIO...]: nvidia-driverd end to end in a qemu VM (TCG, no
# KVM needed) running Debian's kernel and systemd. Builds what is missing
# (cached under $CACHE), boots the guest once per scenario, prints one
# "PASS name" / "FAIL name" line per scenario, exits 1 if any failed.
#
# Scenarios (numbers as in the test plan also work):
#   first-boot (1)  no driver installed: nvidia-driverd installs from an OCI
#                   layout on the host share, loads the modules, READY=1,
#                   kubelet starts after it and sees the driver
#   reboot (2)      second boot of first-boot's disk, layout gone: ready
#                   from the store without a download
#   badmagic (7)    the installed tree's modules carry another kernel
#                   release in their vermagic: refused and not loaded,
#                   although this kernel (CONFIG_MODVERSIONS) would load them
#
# Environment (see README.md): E2E_CACHE (cache dir), E2E_TIMEOUT (seconds
# per boot, 300), E2E_KEEP=1 (keep the scratch disk), E2E_LIBRARY_MODE
# (ldconfig, the default, or overlay, which Debian's linker path refuses),
# E2E_PERSISTENCED (default nvidia-persistenced.service; empty for none),
# E2E_DEBUG_JOBS=SECONDS
# (`systemctl list-jobs` that long after boot, in the share's jobs.txt),
# E2E_HOLD=SECONDS (the guest waits before its checks, to see restarts).
. "$(dirname "$0")/lib.sh"
need qemu-system-x86 perl
scenarios=()
for a in "${@:-first-boot reboot noimage badmagic rollback}"; do
	for s in $a; do
		case $s in
		1 | first-boot) scenarios+=(first-boot) ;;
		2 | reboot) scenarios+=(reboot) ;;
		7 | badmagic) scenarios+=(badmagic) ;;
		5 | noimage) scenarios+=(noimage) ;;
		8 | rollback) scenarios+=(rollback) ;;
		*) die "unknown scenario $s (first-boot, reboot, noimage, badmagic, rollback)" ;;
		esac
	done
done

t0=$(date +%s)
image=$("$E2E_DIR/build-image.sh")
release=$(cat "$image/release")
bin=$(build_binary)
run=$CACHE/run
rm -rf "$run"
mkdir -p "$run"
"$E2E_DIR/build-driver.sh" "$release" "$run/driver"
tag="debian12-$release-$DRIVER_VERSION"
log "setup done in $(( $(date +%s) - t0 )) s (image $image, kernel $release)"

# share NAME [DRIVER [POLICY]]: a fresh host directory for the guest's
# /mnt/share, with the guest's config wanting DRIVER under failure-policy
# POLICY.
share() {
	local s=$run/share-$1 want=${2:-$DRIVER_VERSION} policy=${3:-fail}
	rm -rf "$s"
	mkdir -p "$s"
	cp "$bin" "$s/nvidia-driverd"
	cp "$E2E_DIR/guest-run.sh" "$s/run.sh"
	[ -z "${E2E_DEBUG_JOBS:-}" ] || echo "$E2E_DEBUG_JOBS" >"$s/debug-jobs"
	[ -z "${E2E_HOLD:-}" ] || echo "$E2E_HOLD" >"$s/hold"
	cat >"$s/config.yaml" <<-YAML
	driver-version: $want
	failure-policy: $policy
	source: oci-layout:/mnt/share/layout
	tag-template: "{{.OSID}}{{.OSVersion}}-{{.KernelRelease}}-{{.DriverVersion}}"
	require-gpu: false
	library-mode: ${E2E_LIBRARY_MODE:-ldconfig}
	module-params:
	  nvidia: NVreg_EnableMSI=1
	persistenced: "${E2E_PERSISTENCED-nvidia-persistenced.service}"
	YAML
	echo "$s"
}

# boot DISK SHARE SCENARIO [snapshot]: one boot; the guest powers off
# after e2e.service. Returns 0 when the guest reported RESULT pass.
boot() {
	local disk=$1 s=$2 name=$3 snap=${4:-} b0 rc
	echo "$name" >"$s/scenario"
	rm -f "$s/result.txt"
	b0=$(date +%s.%N)
	timeout "${E2E_TIMEOUT:-300}" qemu-system-x86_64 -accel tcg -cpu qemu64 -smp 1 -m 1024 \
		-nic none -display none -monitor none -no-reboot \
		-kernel "$image/vmlinuz" -initrd "$image/initrd.img" \
		-append "root=/dev/vda rw console=ttyS0 quiet panic=-1 systemd.show_status=1" \
		-drive "file=$disk,if=virtio,format=raw${snap:+,snapshot=on}" \
		-virtfs "local,path=$s,mount_tag=share,security_model=none" \
		-serial "file:$s/console.log" && rc=0 || rc=$?
	boot_s=$(printf '%.1f' "$(echo "$(date +%s.%N) - $b0" | bc)")
	log "$name: boot took ${boot_s} s (qemu exit $rc); results in $s"
	if [ -f "$s/result.txt" ]; then
		sed 's/^/    /' "$s/result.txt" >&2
	else
		log "$name: no result.txt; console tail:"
		tail -20 "$s/console.log" | sed 's/^/    /' >&2
	fi
	grep -qx 'RESULT pass' "$s/result.txt" 2>/dev/null
}

failed=0
report() { # report NAME STATUS
	local ready
	ready=$(grep -o 'ready_ms=[0-9]*' "$run/share-$1/result.txt" 2>/dev/null | head -1 || true)
	if [ "$2" = 0 ]; then
		echo "PASS $1 (boot ${boot_s}s${ready:+, $ready})"
	else
		echo "FAIL $1 (boot ${boot_s}s${ready:+, $ready}; see $run/share-$1)"
		failed=1
	fi
}

publish() { # publish TREE LAYOUT [DRIVER]
	local driver=${3:-$DRIVER_VERSION}
	"$bin" publish --from "$1" --os debian --os-version 12 --kernel-release "$release" \
		--driver "$driver" --mtime 0 --oci-layout "$2" "debian12-$release-$driver" >/dev/null
}

# first_boot: boot a copy of the pristine disk that installs the driver;
# reboot and rollback continue on that disk.
first_boot() {
	s=$(share first-boot)
	publish "$run/driver/tree" "$s/layout"
	cp --sparse=always "$image/disk.img" "$run/disk-pair.img"
	boot "$run/disk-pair.img" "$s" first-boot && st=0 || st=1
	report first-boot $st
	pair_done=1
}

pair_done=
for sc in "${scenarios[@]}"; do
	case $sc in
	first-boot)
		first_boot
		;;
	reboot)
		if [ -z "$pair_done" ]; then
			log "reboot needs first-boot's disk: running first-boot first"
			first_boot
		fi
		s=$(share reboot)
		boot "$run/disk-pair.img" "$s" reboot && st=0 || st=1
		report reboot $st
		;;
	rollback)
		if [ -z "$pair_done" ]; then
			log "rollback needs first-boot's disk: running first-boot first"
			first_boot
		fi
		# The config now wants a newer driver whose nvidia.ko fails init:
		# it is fetched, switched to, fails, is undone and rolled back, and
		# keep-previous brings the working driver back in the same boot.
		s=$(share rollback "$BROKEN_VERSION" keep-previous)
		publish "$run/driver/tree-broken" "$s/layout" "$BROKEN_VERSION"
		echo "$BROKEN_VERSION" >"$s/broken-version"
		boot "$run/disk-pair.img" "$s" rollback snapshot && st=0 || st=1
		report rollback $st
		;;
	noimage)
		# Nothing installed, and the only image in reach is for another
		# driver: failure-policy fail must keep kubelet from starting.
		s=$(share noimage)
		publish "$run/driver/tree" "$s/layout"
		echo "$BROKEN_VERSION" >"$s/wanted-version"
		sed -i "s/^driver-version: .*/driver-version: $BROKEN_VERSION/" "$s/config.yaml"
		boot "$image/disk.img" "$s" noimage snapshot && st=0 || st=1
		report noimage $st
		;;
	badmagic)
		s=$(share badmagic)
		# The tree is in the store already, as if installed before: publish
		# would refuse it, rightly.
		seed=$run/seed
		rm -rf "$seed"
		mkdir -p "$seed/$DRIVER_VERSION"
		cp -a "$run/driver/tree-badmagic" "$seed/$DRIVER_VERSION/$release"
		ln -s "$DRIVER_VERSION/$release" "$seed/current"
		tar -C "$seed" --owner=0 --group=0 -cf "$s/store-seed.tar" .
		cp "$run/driver/fake-release" "$s/fake-release"
		boot "$image/disk.img" "$s" badmagic snapshot && st=0 || st=1
		report badmagic $st
		;;
	esac
done
[ -n "${E2E_KEEP:-}" ] || rm -f "$run"/disk-*.img
log "total $(( $(date +%s) - t0 )) s"
exit $failed
