#!/bin/bash
# run-e2e.sh [SCENARIO...]: nvidia-driverd end to end in a qemu VM (TCG, no
# KVM needed) running Debian's kernel and systemd. Builds what is missing
# (cached under $CACHE), boots the guest once or twice per scenario, prints
# one "PASS name" / "FAIL name" line per scenario, exits 1 if any failed.
# Images come from a registry inside the guest (Debian's docker-registry on
# the guest's loopback; its storage is filled on the host with the
# project's own `publish` against the same server).
#
# Scenarios (the numbers of the test plan work too), run in this order:
#   first-boot (1)     no driver installed: pulled from the guest registry,
#                      installed, modules loaded, READY=1, kubelet after it
#   reboot (2)         same disk, registry stopped: ready without a download
#   upgrade            a live driver upgrade: driver-version changed and
#                      systemctl reload; refused (holder named) while a
#                      process holds /dev/nvidiactl, done once it has gone
#   deactivate         deactivate, then activate, on the running system
#   rollback (8)       a newer driver whose nvidia.ko fails init: rolled back
#                      in the same boot, keep-previous loads the old one
#   osupdate (3)       same disk booted into the -rt kernel with a bumped
#                      os-release: mismatch seen, matching image pulled,
#                      switched, loaded; the old tree kept as previous
#   keep-previous (5)  osupdate's disk back on the standard kernel, a driver
#                      wanted that no registry serves, registry down: the
#                      previous tree, which matches, is used
#   noimage (5)        fresh disk, the registry has no image for this kernel,
#                      failure-policy fail: STATUS= says why, no kubelet
#   badmagic (7)       modules whose vermagic differs only in the release:
#                      refused, though this kernel would load them
#   sig-unsigned       booted with module.sig_enforce=1: the unsigned stubs
#                      are refused before finit_module, with the diagnosis
#   sig-untrusted      the same with stubs signed by a throwaway key: the
#                      kernel refuses them; the signer, its key id and the
#                      keys the kernel trusts are named
#   overlay            library-mode overlay with a Flatcar-like linker
#                      (/usr/lib64 searched): read-only overlays on
#                      /usr/lib64 and /opt/bin that other services see, not
#                      stacked by a restart, removed by deactivate
#   powercut (6)       the VM is killed while layers stream in from a slow
#                      registry; the next boot converges to a working driver
#   prefetch (4)       a Flatcar-like guest: a fake update_engine announces a
#                      staged OS version, the daemon prefetches its driver;
#                      the reboot into it (new kernel, registry stopped) is
#                      ready without a download
#   kernel-prefetch (4) the same on the generic host: a kernel installed
#                      while the daemon runs has its driver prefetched
#
# The real-driver tier ("real", or by name; build-real-driver.sh builds
# NVIDIA's 535 driver from Debian's packages for the standard kernel):
#   real-nogpu         default require-gpu, no GPU: nothing fetched or
#                      loaded, the unit active with STATUS= saying so,
#                      kubelet started
#   real-libs          the real tree installed with modules: [] (user space
#                      only): libcuda and NVML in the linker cache from the
#                      tree, NVIDIA's nvidia-smi failing to reach a driver,
#                      persistenced not started, status with the tree's size
#   real-load          real-libs' disk, the real modules wanted: the in-tree
#                      prerequisites from modules.dep, then nvidia.ko, which
#                      refuses a machine without a GPU: STATUS= quotes NVRM,
#                      the unit fails, everything it loaded or set up undone
#   real-open-load     the same with NVIDIA's open kernel modules, on a fresh
#                      disk: pulled, installed, refused by the kernel alike
#
# Environment (see README.md): E2E_CACHE (cache dir), E2E_TIMEOUT (seconds
# per boot, 300), E2E_KEEP=1 (keep the scratch disks), E2E_LIBRARY_MODE
# (ldconfig, the default, or overlay, which Debian's linker path refuses),
# E2E_PERSISTENCED (default nvidia-persistenced.service; empty for none),
# E2E_DEBUG_JOBS=SECONDS (`systemctl list-jobs` that long after boot, in the
# share's jobs.txt), E2E_HOLD=SECONDS (the guest waits before its checks).
. "$(dirname "$0")/lib.sh"
need_root "$@"
need qemu-system-x86 perl bc python3
ORDER="first-boot reboot upgrade deactivate rollback osupdate keep-previous noimage badmagic sig-unsigned sig-untrusted overlay powercut prefetch kernel-prefetch"
REAL_ORDER="real-nogpu real-libs real-load real-open-load"
want=" "
for a in "${@:-$ORDER}"; do
	for s in $a; do
		case $s in
		1) s=first-boot ;; 2) s=reboot ;; 3) s=osupdate ;; 4) s="prefetch kernel-prefetch" ;; 6) s=powercut ;; 7) s=badmagic ;; 8) s=rollback ;;
		5) s="noimage keep-previous" ;;
		real) s=$REAL_ORDER ;;
		esac
		for x in $s; do
			case " $ORDER $REAL_ORDER " in
			*" $x "*) want+="$x " ;;
			*) die "unknown scenario $x ($ORDER)" ;;
			esac
		done
	done
done

t0=$(date +%s)
image=$("$E2E_DIR/build-image.sh")
release=$(cat "$image/release")
release_rt=$(cat "$image/release-rt")
bin=$(build_binary)
(cd "$REPO" && CGO_ENABLED=0 go build -trimpath -o "$CACHE/bin/fakeupdateengine" ./test/e2e/fakeupdateengine)
registry_bin=$(bash "$REPO/test/registry/distribution.sh")
run=$CACHE/run
rm -rf "$run"
mkdir -p "$run"
"$E2E_DIR/build-driver.sh" "$release" "$run/driver"
"$E2E_DIR/build-driver.sh" "$release_rt" "$run/driver-rt"
case $want in *" real-"*)
	real=$("$E2E_DIR/build-real-driver.sh" "$release")
	real_version=$(cat "$real/version")
	;;
esac
case $want in *" real-open-"*)
	real_open=$("$E2E_DIR/build-real-driver.sh" "$release" open)
	real_open_version=$(cat "$real_open/version")
	;;
esac
log "setup done in $(( $(date +%s) - t0 )) s (image $image, kernels $release, $release_rt)"

# share NAME [DRIVER [POLICY]]: a fresh host directory for the guest's
# /mnt/share, with the guest's config wanting DRIVER under failure-policy
# POLICY from the guest registry.
share() {
	local s=$run/share-$1 want=${2:-$DRIVER_VERSION} policy=${3:-fail}
	rm -rf "$s"
	mkdir -p "$s"
	cp "$bin" "$s/nvidia-driverd"
	cp "$E2E_DIR/guest-run.sh" "$s/run.sh"
	echo "$1" >"$s/scenario"
	[ -z "${E2E_DEBUG_JOBS:-}" ] || echo "$E2E_DEBUG_JOBS" >"$s/debug-jobs"
	[ -z "${E2E_HOLD:-}" ] || echo "$E2E_HOLD" >"$s/hold"
	cat >"$s/config.yaml" <<-YAML
	driver-version: $want
	failure-policy: $policy
	repository: $REGISTRY/nvidia-driver
	insecure-registries: [$REGISTRY]
	tag-template: "{{.OSID}}{{.OSVersion}}-{{.KernelRelease}}-{{.DriverVersion}}"
	require-gpu: false
	library-mode: ${E2E_LIBRARY_MODE:-ldconfig}
	module-params:
	  nvidia: NVreg_EnableMSI=1
	persistenced: "${E2E_PERSISTENCED-nvidia-persistenced.service}"
	metrics-addr: 127.0.0.1:9402
	metrics-textfile: /run/nvidia-driverd.prom
	YAML
	echo "$s"
}

# registry SHARE ENTRY...: the guest registry's contents for SHARE, each
# ENTRY "TREE OS_VERSION KERNEL_RELEASE DRIVER [OS_ID [TAG]]" (OS_ID debian
# and TAG debian<os-version>-<kernel>-<driver> by default) published by
# nvidia-driverd to Debian's registry server on the host, whose storage then
# travels as registry.tar.
registry() {
	local s=$1 dir port pid e tree osv krel drv osid tag
	shift
	dir=$(mktemp -d "$run/registry.XXXXXX")
	port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
	printf 'version: 0.1\nlog: {level: error}\nstorage: {filesystem: {rootdirectory: %s/data}}\nhttp: {addr: "127.0.0.1:%s"}\n' "$dir" "$port" >"$dir/config.yml"
	"$registry_bin" serve "$dir/config.yml" >"$dir/log" 2>&1 &
	pid=$!
	for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
	for e in "$@"; do
		read -r tree osv krel drv osid tag <<<"$e"
		osid=${osid:-debian}
		tag=${tag:-debian$osv-$krel-$drv}
		"$bin" --insecure-registries "127.0.0.1:$port" publish --from "$tree" --os "$osid" --os-version "$osv" \
			--kernel-release "$krel" --driver "$drv" --mtime 0 \
			"127.0.0.1:$port/nvidia-driver:$tag" >/dev/null ||
			{ kill "$pid"; die "publish $tree to the host registry failed"; }
	done
	kill "$pid"
	wait "$pid" 2>/dev/null || true
	tar -C "$dir/data" -cf "$s/registry.tar" .
	rm -rf "$dir"
}

# qemu_cmd DISK SHARE [snapshot]: the guest's command line; $kernel picks
# the standard kernel ("") or the -rt one ("-rt"), $cmdline adds to the
# kernel's command line.
kernel=
cmdline=
qemu_cmd() {
	local disk=$1 s=$2 snap=${3:-} vmlinuz=$image/vmlinuz initrd=$image/initrd.img
	if [ "$kernel" = -rt ]; then vmlinuz=$image/vmlinuz-rt initrd=$image/initrd-rt.img; fi
	echo qemu-system-x86_64 -accel tcg -cpu qemu64 -smp 1 -m 1024 \
		-nic none -display none -monitor none -no-reboot \
		-kernel "$vmlinuz" -initrd "$initrd" \
		-append "'root=/dev/vda rw console=ttyS0 quiet panic=-1 systemd.show_status=1${cmdline:+ $cmdline}'" \
		-drive "file=$disk,if=virtio,format=raw${snap:+,snapshot=on}" \
		-virtfs "local,path=$s,mount_tag=share,security_model=none" \
		-serial "file:$s/console.log"
}

# boot DISK SHARE NAME [snapshot]: one boot; the guest powers off after
# e2e.service. Returns 0 when the guest reported RESULT pass.
boot() {
	local disk=$1 s=$2 name=$3 snap=${4:-} b0 rc
	rm -f "$s/result.txt"
	b0=$(date +%s.%N)
	eval timeout "${E2E_TIMEOUT:-300}" "$(qemu_cmd "$disk" "$s" "$snap")" && rc=0 || rc=$?
	boot_s=$(printf '%.1f' "$(echo "$(date +%s.%N) - $b0" | bc)")
	log "$name: boot ${kernel:-standard} kernel took ${boot_s} s (qemu exit $rc); results in $s"
	if [ -f "$s/result.txt" ]; then
		sed 's/^/    /' "$s/result.txt" >&2
		log "$name: $(grep -c '^ok' "$s/result.txt") checks passed, $(grep -c '^not ok' "$s/result.txt") failed"
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

# The pair disk carries first-boot's install on to reboot, rollback (as a
# snapshot), osupdate and keep-previous (a snapshot).
done_list=" "
needs() { # needs SCENARIO: run it first unless it ran
	case $done_list in *" $1 "*) return ;; esac
	log "running $1 first: the next scenario continues on its disk"
	scenario "$1"
}

scenario() {
	local s st
	done_list+="$1 "
	kernel= cmdline=
	case $1 in
	first-boot)
		s=$(share first-boot)
		registry "$s" "$run/driver/tree 12 $release $DRIVER_VERSION"
		cp --sparse=always "$image/disk.img" "$run/disk-pair.img"
		boot "$run/disk-pair.img" "$s" first-boot && st=0 || st=1
		;;
	reboot)
		needs first-boot
		s=$(share reboot) # no registry.tar: no registry
		boot "$run/disk-pair.img" "$s" reboot && st=0 || st=1
		;;
	upgrade)
		needs first-boot
		# The running 550 is replaced by 560 without a reboot; the
		# registry has the new image.
		s=$(share upgrade)
		registry "$s" "$run/driver/tree-next 12 $release $BROKEN_VERSION"
		echo "$BROKEN_VERSION" >"$s/next-version"
		boot "$run/disk-pair.img" "$s" upgrade snapshot && st=0 || st=1
		;;
	deactivate)
		needs first-boot
		s=$(share deactivate)
		boot "$run/disk-pair.img" "$s" deactivate snapshot && st=0 || st=1
		;;
	rollback)
		needs first-boot
		# The config now wants a newer driver whose nvidia.ko fails init:
		# it is fetched, switched to, fails, is undone and rolled back, and
		# keep-previous brings the working driver back in the same boot.
		s=$(share rollback "$BROKEN_VERSION" keep-previous)
		registry "$s" "$run/driver/tree-broken 12 $release $BROKEN_VERSION"
		echo "$BROKEN_VERSION" >"$s/broken-version"
		boot "$run/disk-pair.img" "$s" rollback snapshot && st=0 || st=1
		;;
	osupdate)
		needs first-boot
		# The OS updated itself: another kernel (the -rt flavour, so another
		# vermagic) and a new os-release; the registry has the new image.
		s=$(share osupdate)
		sed 's/^VERSION_ID=.*/VERSION_ID="13"/; s/^VERSION=.*/VERSION="13 (update)"/' "$image/os-release" >"$s/os-release"
		registry "$s" "$run/driver-rt/tree 13 $release_rt $DRIVER_VERSION"
		echo "$release" >"$s/old-release"
		kernel=-rt
		boot "$run/disk-pair.img" "$s" osupdate && st=0 || st=1
		;;
	keep-previous)
		needs osupdate
		# Back on the standard kernel, wanting a driver no registry has,
		# and no registry at all: the previous tree matches and is used.
		s=$(share keep-previous "$BROKEN_VERSION" keep-previous)
		echo "$release_rt" >"$s/rt-release"
		boot "$run/disk-pair.img" "$s" keep-previous snapshot && st=0 || st=1
		;;
	noimage)
		# Nothing installed, and the registry only has the -rt kernel's
		# image: failure-policy fail must keep kubelet from starting.
		s=$(share noimage)
		registry "$s" "$run/driver-rt/tree 12 $release_rt $DRIVER_VERSION"
		boot "$image/disk.img" "$s" noimage snapshot && st=0 || st=1
		;;
	badmagic)
		s=$(share badmagic)
		# The tree is in the store already, as if installed before: publish
		# would refuse it, rightly.
		local seed=$run/seed
		rm -rf "$seed"
		mkdir -p "$seed/$DRIVER_VERSION"
		cp -a "$run/driver/tree-badmagic" "$seed/$DRIVER_VERSION/$release"
		ln -s "$DRIVER_VERSION/$release" "$seed/current"
		tar -C "$seed" --owner=0 --group=0 -cf "$s/store-seed.tar" .
		cp "$run/driver/fake-release" "$s/fake-release"
		boot "$image/disk.img" "$s" badmagic snapshot && st=0 || st=1
		;;
	overlay)
		s=$(share overlay)
		sed -i 's/^library-mode: .*/library-mode: overlay/' "$s/config.yaml"
		touch "$s/ld-usr-lib64"
		registry "$s" "$run/driver/tree 12 $release $DRIVER_VERSION"
		boot "$image/disk.img" "$s" overlay snapshot && st=0 || st=1
		;;
	sig-unsigned | sig-untrusted)
		# The kernel enforces module signatures. The stubs are unsigned,
		# or signed with a key it does not trust.
		s=$(share "$1")
		local tree=$run/driver/tree
		if [ "$1" = sig-untrusted ]; then
			tree=$run/driver/tree-signed
			cp "$run/driver/signing-serial" "$s/signing-serial"
		fi
		registry "$s" "$tree 12 $release $DRIVER_VERSION"
		cmdline=module.sig_enforce=1
		boot "$image/disk.img" "$s" "$1" snapshot && st=0 || st=1
		;;
	powercut)
		powercut && st=0 || st=1
		;;
	prefetch)
		prefetch && st=0 || st=1
		;;
	kernel-prefetch)
		kernel_prefetch && st=0 || st=1
		;;
	real-nogpu)
		# The default require-gpu, and no GPU: nothing to fetch (there is
		# no registry), nothing to load, and kubelet must start.
		s=$(share real-nogpu)
		sed -i '/^require-gpu:/d' "$s/config.yaml"
		boot "$image/disk.img" "$s" real-nogpu snapshot && st=0 || st=1
		;;
	real-libs)
		# NVIDIA's real tree, user space only (modules: []).
		s=$(share real-libs "$real_version")
		echo 'modules: []' >>"$s/config.yaml"
		echo "$real_version" >"$s/real-version"
		cp "$real/manifest.txt" "$s/real-manifest.txt"
		registry "$s" "$real/tree 12 $release $real_version"
		cp --sparse=always "$image/disk.img" "$run/disk-real.img"
		boot "$run/disk-real.img" "$s" real-libs && st=0 || st=1
		;;
	real-open-load)
		s=$(share real-open-load "$real_open_version")
		echo "$real_open_version" >"$s/real-version"
		cp "$real_open/manifest.txt" "$s/real-manifest.txt"
		registry "$s" "$real_open/tree 12 $release $real_open_version"
		boot "$image/disk.img" "$s" real-open-load snapshot && st=0 || st=1
		;;
	real-load)
		needs real-libs
		# The same tree, its modules wanted: nvidia.ko meets no GPU.
		s=$(share real-load "$real_version")
		echo "$real_version" >"$s/real-version"
		boot "$run/disk-real.img" "$s" real-load snapshot && st=0 || st=1
		;;
	esac
	report "$1" $st
}

# powercut: the first boot streams a large image from a registry slowed to
# 8 Mbit/s; once the guest reports more than 4 MiB in the store's staging
# directory the host kills qemu (no shutdown, no sync). The second boot, on
# the same disk and with the registry at full speed, must converge.
powercut() {
	local s big qpid cut=
	s=$(share powercut)
	big=$run/driver/tree-big
	rm -rf "$big"
	cp -a "$run/driver/tree" "$big"
	head -c 24M /dev/urandom >"$big/firmware/nvidia/$DRIVER_VERSION/gsp_big.bin"
	sha256sum <"$big/firmware/nvidia/$DRIVER_VERSION/gsp_big.bin" | cut -d' ' -f1 >"$s/big.sha256"
	registry "$s" "$big 12 $release $DRIVER_VERSION"
	touch "$s/registry-slow" "$s/watch-staging"
	cp --sparse=always "$image/disk.img" "$run/disk-powercut.img"
	echo powercut-1 >"$s/scenario"
	eval "exec $(qemu_cmd "$run/disk-powercut.img" "$s")" &
	qpid=$!
	for _ in $(seq $(( ${E2E_TIMEOUT:-300} * 5 ))); do
		if [ -s "$s/staging-seen" ]; then cut=1; break; fi
		kill -0 "$qpid" 2>/dev/null || break
		sleep 0.2
	done
	kill -KILL "$qpid" 2>/dev/null || true
	wait "$qpid" 2>/dev/null || true
	if [ -z "$cut" ]; then
		log "powercut: the download was never seen in staging; console tail:"
		tail -20 "$s/console.log" | sed 's/^/    /' >&2
		boot_s=0
		return 1
	fi
	log "powercut: power cut with $(cat "$s/staging-seen") KiB in staging"
	mv "$s/console.log" "$s/console-1.log"
	rm -f "$s/registry-slow" "$s/watch-staging"
	echo powercut >"$s/scenario"
	boot "$run/disk-powercut.img" "$s" powercut
}

# flatcar_os_release VERSION: an os-release saying Flatcar VERSION.
flatcar_os_release() {
	printf 'NAME="Flatcar Container Linux by Kinvolk"\nID=flatcar\nID_LIKE=coreos\nVERSION=%s\nVERSION_ID=%s\nBUILD_ID=e2e\nPRETTY_NAME="Flatcar Container Linux by Kinvolk %s (e2e)"\n' "$1" "$1" "$1"
}

# prefetch: the guest claims to be Flatcar 4081.1.0 (tree names and tags
# are OS versions there). Boot 1 installs 4081.1.0's driver; a fake
# update_engine then announces 4081.2.0 as staged and the daemon prefetches
# its image, whose label names the -rt kernel. Boot 2 is the update: the -rt
# kernel, os-release 4081.2.0, no registry.
prefetch() {
	local s s2 tmpl='tag-template: "{{.OSVersion}}-{{.DriverVersion}}"'
	s=$(share prefetch-staged)
	sed -i "s/^tag-template: .*/$tmpl/" "$s/config.yaml"
	flatcar_os_release 4081.1.0 >"$s/os-release"
	registry "$s" "$run/driver/tree 4081.1.0 $release $DRIVER_VERSION flatcar 4081.1.0-$DRIVER_VERSION" \
		"$run/driver-rt/tree 4081.2.0 $release_rt $DRIVER_VERSION flatcar 4081.2.0-$DRIVER_VERSION"
	cp "$CACHE/bin/fakeupdateengine" "$s/fakeupdateengine"
	echo 4081.2.0 >"$s/staged-version"
	echo "$release_rt" >"$s/staged-kernel"
	cp --sparse=always "$image/disk.img" "$run/disk-prefetch.img"
	kernel=
	boot "$run/disk-prefetch.img" "$s" prefetch-staged || return 1
	s2=$(share prefetch)
	sed -i "s/^tag-template: .*/$tmpl/" "$s2/config.yaml"
	flatcar_os_release 4081.2.0 >"$s2/os-release"
	echo "$release" >"$s2/old-release"
	kernel=-rt
	boot "$run/disk-prefetch.img" "$s2" prefetch
}

# kernel_prefetch: a Debian guest whose -rt kernel is only half installed
# at boot (no modules.dep). Boot 1 installs the standard kernel's driver;
# the checks then finish the kernel's install (modules.dep appears, as
# depmod leaves it) and the daemon prefetches the image for it. Boot 2 runs
# that kernel with no registry.
kernel_prefetch() {
	local s s2
	s=$(share kernel-prefetch-staged)
	registry "$s" "$run/driver/tree 12 $release $DRIVER_VERSION" "$run/driver-rt/tree 12 $release_rt $DRIVER_VERSION"
	echo "$release_rt" >"$s/hide-kernel"
	cp --sparse=always "$image/disk.img" "$run/disk-kprefetch.img"
	kernel=
	boot "$run/disk-kprefetch.img" "$s" kernel-prefetch-staged || return 1
	s2=$(share kernel-prefetch)
	echo "$release" >"$s2/old-release"
	kernel=-rt
	boot "$run/disk-kprefetch.img" "$s2" kernel-prefetch
}

for sc in $ORDER $REAL_ORDER; do
	case $want in *" $sc "*) ;; *) continue ;; esac
	case $done_list in *" $sc "*) continue ;; esac
	scenario "$sc"
done
[ -n "${E2E_KEEP:-}" ] || rm -f "$run"/disk-*.img
log "total $(( $(date +%s) - t0 )) s"
exit $failed
