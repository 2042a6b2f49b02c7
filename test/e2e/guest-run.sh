#!/bin/sh
# Runs inside the guest as e2e.service, after nvidia-driverd.service and
# kubelet.service have settled. Scenario name in /mnt/share/scenario.
# Prints "ok - ..." / "not ok - ..." lines, "info ..." lines and a final
# "RESULT pass|fail"; leaves journals and status on the share.
S=/mnt/share
scenario=$(cat $S/scenario)
rel=$(uname -r)
fails=0
ok() { echo "ok - $*"; }
# plain_journal DESCRIPTION EXTENDED-REGEX: the daemon's journal read as
# plain text (no -o verbose) has a line matching the pattern.
plain_journal() {
	if journalctl -b -u nvidia-driverd -o cat | grep -Eq "$2"; then ok "journal in words: $1"; else nok "journal in words: no $1 ($2)"; fi
}
nok() { echo "not ok - $*"; fails=$((fails + 1)); }
check() { # check DESCRIPTION COMMAND...
	d=$1; shift
	if "$@" >/dev/null 2>&1; then ok "$d"; else nok "$d"; fi
}
eq() { # eq DESCRIPTION GOT WANT
	if [ "$2" = "$3" ]; then ok "$1 ($2)"; else nok "$1: got '$2', want '$3'"; fi
}
prop() { systemctl show -p "$2" --value "$1"; }

echo "info scenario=$scenario kernel=$rel"
# E2E_HOLD: let restarts (RestartSec=15s) happen before looking.
if [ -f $S/hold ]; then sleep "$(cat $S/hold)"; fi
echo "info driverd: NRestarts=$(prop nvidia-driverd NRestarts)"
journalctl -b -o short-monotonic -u nvidia-driverd >$S/journal-driverd.txt 2>&1
journalctl -b -o short-monotonic >$S/journal.txt 2>&1
journalctl -b -o export -u nvidia-driverd >$S/journal-driverd.export 2>&1
journalctl -b -o json -u nvidia-driverd >$S/journal-driverd.json 2>&1
/opt/bin/nvidia-driverd status --json >$S/status.json 2>$S/status.stderr
status_rc=$?
/opt/bin/nvidia-driverd status >$S/status.txt 2>&1
SYSTEMD_COLORS=0 systemctl status --no-pager -n 0 nvidia-driverd >$S/systemctl-status.txt 2>&1
cp /var/lib/e2e/kubelet.txt $S/kubelet.txt 2>/dev/null
cp /opt/nvidia/state.json $S/state.json 2>/dev/null
findmnt -rn >$S/mounts.txt 2>&1
echo "info driverd: ActiveState=$(prop nvidia-driverd ActiveState) SubState=$(prop nvidia-driverd SubState) Result=$(prop nvidia-driverd Result)"
echo "info driverd: StatusText=$(prop nvidia-driverd StatusText)"
echo "info store: $(cd /opt/nvidia 2>/dev/null && for l in current previous; do [ -L $l ] && printf '%s -> %s; ' $l "$(readlink $l)"; done)"
echo "info overlays: $(findmnt -rn -t overlay -o TARGET,OPTIONS | tr '\n' ' ')"

# wait_prefetch waits up to two minutes for status --json to report a
# prefetch ready, then keeps both forms of status on the share.
wait_prefetch() {
	i=0
	until /opt/bin/nvidia-driverd status --json 2>/dev/null | grep -Eq '"state": *"ready"'; do
		i=$((i + 1))
		if [ $i -gt 240 ]; then break; fi
		sleep 0.5
	done
	/opt/bin/nvidia-driverd status --json >$S/status-prefetch.json 2>&1
	/opt/bin/nvidia-driverd status >$S/status.txt 2>&1
	check "status --json: prefetch ready" grep -Eq '"state": *"ready"' $S/status-prefetch.json
}

# wait_status TEXT SECONDS: prints the unit's STATUS= once it contains
# TEXT, or what it is after SECONDS.
wait_status() {
	i=0
	while [ $i -lt $(($2 * 5)) ]; do
		st=$(prop nvidia-driverd StatusText)
		case $st in *"$1"*) break ;; esac
		i=$((i + 1))
		sleep 0.2
	done
	prop nvidia-driverd StatusText
}

# Microseconds from the daemon's start to READY=1 (the unit becoming active).
ready_time() {
	if [ "$(prop nvidia-driverd ActiveState)" != active ]; then return; fi
	start=$(prop nvidia-driverd ExecMainStartTimestampMonotonic)
	ready=$(prop nvidia-driverd ActiveEnterTimestampMonotonic)
	echo "info ready_ms=$(( (ready - start) / 1000 ))"
	echo "info boot_to_ready_ms=$(( ready / 1000 ))"
}

driver_usable() {
	eq "nvidia-driverd.service is active" "$(prop nvidia-driverd ActiveState)" active
	st=$(prop nvidia-driverd StatusText)
	if [ -n "$st" ]; then ok "status text: $st"; else nok "no STATUS= text"; fi
	eq "/sys/module/nvidia/version" "$(cat /sys/module/nvidia/version 2>&1)" 550.54.14
	for m in nvidia_modeset nvidia_uvm nvidia_drm; do
		eq "$m loaded" "$(cat /sys/module/$m/initstate 2>&1)" live
	done
	eq "module-params NVreg_EnableMSI (config wins over the tree's modprobe.d)" \
		"$(cat /sys/module/nvidia/parameters/NVreg_EnableMSI 2>&1)" 1
	# No GPU in the VM, so no /dev/nvidiaN.
	for d in nvidiactl nvidia-modeset nvidia-uvm nvidia-uvm-tools; do
		if [ -c /dev/$d ]; then ok "/dev/$d is a character device ($(stat -c '%t:%T' /dev/$d))"; else nok "/dev/$d missing"; fi
	done
	if ldconfig -p | grep -q 'libnvidia-ml.so.1 '; then
		ok "ldconfig -p: $(ldconfig -p | grep 'libnvidia-ml.so.1 ' | sed 's/^[[:space:]]*//')"
	else
		nok "libnvidia-ml.so.1 not in ldconfig -p"
	fi
	check "libcuda.so.1 in ldconfig -p" sh -c "ldconfig -p | grep -q 'libcuda.so.1 '"
	# library-mode ldconfig exposes only the libraries: binaries stay in
	# the tree (/opt/nvidia/current/bin); overlay puts them on /opt/bin.
	if grep -q '^library-mode: overlay' /etc/nvidia-driverd/config.yaml; then smi=/opt/bin/nvidia-smi; else smi=/opt/nvidia/current/bin/nvidia-smi; fi
	if out=$($smi 2>&1); then ok "$smi runs: $out"; else nok "$smi: $out"; fi
	echo "info /opt/bin holds: $(ls /opt/bin | tr '\n' ' ')"
	eq "kubelet saw /dev/nvidiactl" "$(grep nvidiactl= /var/lib/e2e/kubelet.txt 2>&1)" nvidiactl=yes
	eq "kubelet saw the driver version" "$(grep version= /var/lib/e2e/kubelet.txt 2>&1)" version=550.54.14
	eq "kubelet saw nvidia-driverd active" "$(grep driverd= /var/lib/e2e/kubelet.txt 2>&1)" driverd=active
	if grep -q '^persistenced: ""' /etc/nvidia-driverd/config.yaml; then
		echo "info persistenced disabled in config.yaml"
	else
		eq "nvidia-persistenced.service active" "$(prop nvidia-persistenced ActiveState)" active
	fi
	n=$(journalctl -b -u nvidia-driverd MESSAGE_ID=3ea548b9b02cbfb5d41b082b5d85481b -o cat | wc -l)
	if [ "$n" -ge 1 ]; then ok "journal: $n 'driver activated' entry (MESSAGE_ID=3ea548b9...)"; else nok "journal: no 'driver activated' MESSAGE_ID entry"; fi
	eq "status --json exit status" "$status_rc" 0
	check "status --ready exits 0" /opt/bin/nvidia-driverd status --ready
	# Metrics: served on metrics-addr and written to metrics-textfile.
	health=$(bash -c 'exec 3<>/dev/tcp/127.0.0.1/9402 && printf "GET /healthz HTTP/1.0\r\n\r\n" >&3 && head -1 <&3' 2>&1)
	case $health in *" 200 "*) ok "metrics /healthz: $health" ;; *) nok "metrics /healthz: $health" ;; esac
	bash -c 'exec 3<>/dev/tcp/127.0.0.1/9402 && printf "GET /metrics HTTP/1.0\r\n\r\n" >&3 && cat <&3' >$S/metrics.txt 2>&1
	check "metrics: nvidia_driverd_driver_ready 1" grep -qx 'nvidia_driverd_driver_ready 1' $S/metrics.txt
	check "metrics: driver_info names the driver and kernel" grep -q "nvidia_driverd_driver_info{.*driver=\"550.54.14\".*kernel=\"$rel\"" $S/metrics.txt
	check "metrics textfile: nvidia_driverd_driver_ready 1" grep -qx 'nvidia_driverd_driver_ready 1' /run/nvidia-driverd.prom
	check "status --json plan.action none" grep -Eq '"action": *"none"' $S/status.json
	check "status --json driver.loaded 550.54.14" grep -Eq '"loaded": *"550.54.14"' $S/status.json
}

case $scenario in
first-boot)
	driver_usable
	check "tree installed under /opt/nvidia/550.54.14" test -d /opt/nvidia/550.54.14
	check "/opt/nvidia/current points into the store" test -L /opt/nvidia/current
	plain_journal "plan: action, driver, kernel and reason" "^planned install of driver 550\.54\.14 for kernel $rel: .*no installed tree"
	plain_journal "the image fetched" "^fetched .*550\.54\.14.* into /opt/nvidia/550\.54\.14/"
	plain_journal "driver and kernel activated" "^driver activated: 550\.54\.14 from /opt/nvidia/550\.54\.14/.* on kernel $rel, loaded .*nvidia"
	ready_time
	;;
reboot)
	eq "no registry on this boot" "$(prop e2e-registry ActiveState)" inactive
	driver_usable
	if journalctl -b -u nvidia-driverd -o cat | grep -Eq '^(fetched|fetch failed|pulling)'; then
		nok "a download on the second boot: $(journalctl -b -u nvidia-driverd -o cat | grep -E '^(fetched|fetch failed|pulling)' | head -1)"
	else
		ok "no download on the second boot"
	fi
	ready_time
	;;
badmagic)
	eq "nvidia not loaded" "$(test -e /sys/module/nvidia && echo loaded || echo absent)" absent
	state=$(prop nvidia-driverd ActiveState)
	if [ "$state" != active ]; then ok "nvidia-driverd not ready ($state/$(prop nvidia-driverd SubState))"; else nok "nvidia-driverd became active"; fi
	eq "kubelet did not start (Requires=)" "$(prop kubelet ActiveState)" inactive
	check "no /dev/nvidiactl" test ! -e /dev/nvidiactl
	check "status --json: the installed tree does not match the kernel" grep -Eq '"matches_kernel": *false' $S/status.json
	if grep -q "vermagic release .*$(cat $S/fake-release)" $S/status.json; then
		ok "status --json names the module's release $(cat $S/fake-release) as the problem"
	else
		nok "status --json does not name the module's release $(cat $S/fake-release)"
	fi
	n=$(journalctl -b -u nvidia-driverd MESSAGE_ID=3ea548b9b02cbfb5d41b082b5d85481b -o cat | wc -l)
	eq "no 'driver activated' entry" "$n" 0
	# The point of the daemon's own check: this kernel (CONFIG_MODVERSIONS)
	# would have loaded the module anyway.
	ko=$(ls /opt/nvidia/*/*/lib/modules/$rel/video/nvidia.ko | head -1)
	if out=$(insmod "$ko" 2>&1); then
		ok "the kernel itself accepts the mismatched module (insmod $ko); vermagic $(cat /sys/module/nvidia/version 2>/dev/null)"
		rmmod nvidia
	else
		nok "insmod of the mismatched module failed, so the scenario proves nothing: $out"
	fi
	;;
noimage)
	wanted=550.54.14
	state=$(prop nvidia-driverd ActiveState)
	if [ "$state" != active ]; then ok "nvidia-driverd not ready ($state/$(prop nvidia-driverd SubState))"; else nok "nvidia-driverd became active"; fi
	st=$(prop nvidia-driverd StatusText)
	case $st in
	*"has no image tagged debian12-$rel-$wanted"*) ok "status text says why: $st" ;;
	*) nok "status text does not name the missing tag debian12-$rel-$wanted: '$st'" ;;
	esac
	eq "kubelet did not start (Requires=)" "$(prop kubelet ActiveState)" inactive
	eq "nvidia not loaded" "$(test -e /sys/module/nvidia && echo loaded || echo absent)" absent
	check "nothing became current" test ! -e /opt/nvidia/current
	;;
rollback)
	broken=$(cat $S/broken-version)
	eq "nvidia-driverd.service is active (keep-previous)" "$(prop nvidia-driverd ActiveState)" active
	eq "the working driver is loaded again" "$(cat /sys/module/nvidia/version 2>&1)" 550.54.14
	eq "current points back at the working tree" "$(readlink /opt/nvidia/current)" "550.54.14/$rel"
	check "the broken tree was installed before it was tried" test -d /opt/nvidia/$broken/$rel
	check "its image digest is remembered as bad" grep -q '"sha256:' /opt/nvidia/state.json
	n=$(journalctl -b -u nvidia-driverd MESSAGE_ID=c526509b79eaf661b2e558bb11da9cbe -o cat | wc -l)
	if [ "$n" -ge 1 ]; then ok "'activation failed' logged ($n)"; else nok "no 'activation failed' entry"; fi
	if journalctl -b -u nvidia-driverd -o verbose | grep -q "ERROR=.*load module nvidia: .*no NVIDIA GPU the module can drive"; then
		ok "the failure names the module and the kernel's error"
	else
		nok "the failure does not name the module and ENODEV's meaning"
	fi
	eq "kubelet started on the kept driver" "$(prop kubelet ActiveState)" active
	;;
osupdate)
	old=$(cat $S/old-release)
	eq "booted the new kernel" "$(uname -r | grep -c -- -rt-)" 1
	eq "os-release says the new version" "$(. /etc/os-release; echo "$VERSION_ID")" 13
	if journalctl -b -u nvidia-driverd -o verbose | grep -q "REASON=.*550.54.14/$old does not match kernel $rel"; then
		ok "the old tree was found not to match the new kernel"
	else
		nok "no plan naming the old tree's mismatch with $rel"
	fi
	driver_usable
	eq "current is the new kernel's tree" "$(readlink /opt/nvidia/current)" "550.54.14/$rel"
	eq "previous is the old tree, kept" "$(readlink /opt/nvidia/previous)" "550.54.14/$old"
	check "the old tree is still installed" test -f /opt/nvidia/550.54.14/$old/lib/modules/$old/video/nvidia.ko
	n=$(journalctl -b -u nvidia-driverd MESSAGE_ID=d7a7d4b6c1cf0c146ab98f513c7c2a52 -o cat | wc -l)
	if [ "$n" -ge 1 ]; then ok "journal: 'driver switched' (MESSAGE_ID=d7a7d4b6...)"; else nok "journal: no 'driver switched' entry"; fi
	plain_journal "plan: action, driver, kernel and reason" "^planned install of driver 550\.54\.14 for kernel $rel: .*550\.54\.14/$old does not match kernel $rel"
	plain_journal "the switch" "^driver switched: current -> /opt/nvidia/550\.54\.14/$rel, was /opt/nvidia/550\.54\.14/$old"
	plain_journal "driver and kernel activated" "^driver activated: 550\.54\.14 from /opt/nvidia/550\.54\.14/$rel on kernel $rel"
	ready_time
	;;
keep-previous)
	rtrel=$(cat $S/rt-release)
	eq "registry down" "$(prop e2e-registry ActiveState)" inactive
	eq "nvidia-driverd.service is active (keep-previous)" "$(prop nvidia-driverd ActiveState)" active
	st=$(prop nvidia-driverd StatusText)
	case $st in
	*"active from /opt/nvidia/550.54.14/$rel (previous driver kept: "*"127.0.0.1:5000"*) ok "status text says which driver runs and why: $st" ;;
	*) nok "status text does not say the previous driver was kept and why: '$st'" ;;
	esac
	eq "the previous driver is loaded" "$(cat /sys/module/nvidia/version 2>&1)" 550.54.14
	eq "current is the tree matching this kernel" "$(readlink /opt/nvidia/current)" "550.54.14/$rel"
	if journalctl -b -u nvidia-driverd -o verbose | grep -q "127.0.0.1:5000.*connection refused"; then
		ok "the journal says the registry could not be reached"
	else
		nok "the journal does not say the registry was unreachable"
	fi
	n=$(journalctl -b -u nvidia-driverd -o cat | grep -c "kept the previous driver")
	if [ "$n" -ge 1 ]; then ok "journal: 'kept the previous driver'"; else nok "journal: no 'kept the previous driver'"; fi
	eq "kubelet started" "$(prop kubelet ActiveState)" active
	eq "kubelet saw the driver version" "$(grep version= /var/lib/e2e/kubelet.txt 2>&1)" version=550.54.14
	;;
powercut)
	seen=$(cat $S/staging-seen 2>/dev/null)
	echo "info the power was cut with ${seen}KiB in staging"
	if journalctl -b -u nvidia-driverd -o cat | grep -q "removed leftover of an interrupted install"; then
		ok "the interrupted install's leftovers were removed: $(journalctl -b -u nvidia-driverd -o verbose | grep -o 'PATH=.*' | head -1)"
	else
		nok "no 'removed leftover of an interrupted install' in the journal"
	fi
	driver_usable
	check "no staging leftovers" sh -c "test -z \"\$(ls -A /opt/nvidia/.staging 2>/dev/null)\""
	eq "the large firmware file is complete" \
		"$(sha256sum /opt/nvidia/current/firmware/nvidia/550.54.14/gsp_big.bin | cut -d' ' -f1)" "$(cat $S/big.sha256)"
	check "the tree's meta file is there" test -f /opt/nvidia/current/.nvidia-driverd.json
	;;
prefetch-staged)
	driver_usable
	eq "current is this OS version's tree" "$(readlink /opt/nvidia/current)" "550.54.14/4081.1.0"
	echo "info fake update_engine: $(prop fake-update-engine ActiveState)"
	# The update is announced after READY; the prefetch follows.
	wait_prefetch
	check "status --json: prefetch for os_version 4081.2.0" grep -Eq '"os_version": *"4081.2.0"' $S/status-prefetch.json
	staged_kernel=$(cat $S/staged-kernel)
	check "the staged version's tree is in the store, with modules for $staged_kernel" \
		test -f /opt/nvidia/550.54.14/4081.2.0/lib/modules/$staged_kernel/video/nvidia.ko
	eq "current is untouched" "$(readlink /opt/nvidia/current)" "550.54.14/4081.1.0"
	eq "the running driver is untouched" "$(cat /sys/module/nvidia/version 2>&1)" 550.54.14
	st=$(prop nvidia-driverd StatusText)
	case $st in
	*"prefetched 4081.2.0-550.54.14 for the staged update"*) ok "status text: $st" ;;
	*) nok "status text does not show the prefetch: '$st'" ;;
	esac
	if journalctl -b -u nvidia-driverd -o cat | grep -q '^prefetched'; then ok "journal: prefetched"; else nok "journal: no 'prefetched' entry"; fi
	echo "info $(grep '^Prefetch' $S/status.txt)"
	;;
kernel-prefetch-staged)
	driver_usable
	rt=$(ls /lib/modules | grep -- -rt-)
	check "the -rt kernel is half installed (no modules.dep)" test ! -e /lib/modules/$rt/modules.dep
	sleep 2
	check "no prefetch before the kernel is complete" sh -c "! /opt/bin/nvidia-driverd status --json | grep -q '\"prefetch\"'"
	# depmod's last step: modules.dep appears.
	mv /lib/modules/$rt/.modules.dep.e2e /lib/modules/$rt/modules.dep
	wait_prefetch
	check "status --json: prefetch for kernel $rt" grep -Eq "\"kernel_release\": *\"$rt\"" $S/status-prefetch.json
	check "the new kernel's tree is in the store" test -f /opt/nvidia/550.54.14/$rt/lib/modules/$rt/video/nvidia.ko
	eq "current is untouched" "$(readlink /opt/nvidia/current)" "550.54.14/$rel"
	echo "info $(grep '^Prefetch' $S/status.txt)"
	echo "info status text: $(prop nvidia-driverd StatusText)"
	;;
kernel-prefetch)
	old=$(cat $S/old-release)
	eq "booted the new kernel" "$(uname -r | grep -c -- -rt-)" 1
	eq "no registry on this boot" "$(prop e2e-registry ActiveState)" inactive
	driver_usable
	eq "current is the prefetched tree" "$(readlink /opt/nvidia/current)" "550.54.14/$rel"
	eq "previous is the old kernel's tree" "$(readlink /opt/nvidia/previous)" "550.54.14/$old"
	if journalctl -b -u nvidia-driverd -o cat | grep -Eq '^(fetched|fetch failed)'; then nok "a download was tried"; else ok "no download"; fi
	ready_time
	;;
prefetch)
	old=$(cat $S/old-release)
	eq "booted the staged OS version" "$(. /etc/os-release; echo "$VERSION_ID")" 4081.2.0
	eq "booted its kernel" "$(uname -r | grep -c -- -rt-)" 1
	eq "no registry on this boot" "$(prop e2e-registry ActiveState)" inactive
	driver_usable
	eq "current is the prefetched tree" "$(readlink /opt/nvidia/current)" "550.54.14/4081.2.0"
	eq "previous is the old OS version's tree" "$(readlink /opt/nvidia/previous)" "550.54.14/4081.1.0"
	if journalctl -b -u nvidia-driverd -o verbose | grep -q '^ *ACTION=switch'; then ok "planned: switch (no download)"; else nok "the plan was not a switch"; fi
	if journalctl -b -u nvidia-driverd -o cat | grep -Eq '^(fetched|fetch failed)'; then nok "a download was tried"; else ok "no download"; fi
	ready_time
	;;
upgrade)
	next=$(cat $S/next-version)
	driver_usable
	kpid=$(prop kubelet MainPID)
	dpid=$(prop nvidia-driverd MainPID)
	# A CUDA process's stand-in holds the driver through /dev/nvidiactl.
	sleep 600 </dev/nvidiactl &
	holder=$!
	sed -i "s/^driver-version: .*/driver-version: $next/" /etc/nvidia-driverd/config.yaml
	systemctl reload nvidia-driverd
	echo "info systemctl reload: exit $?"
	st=$(wait_status "re-check failed" 120)
	journalctl -b -o short-monotonic -u nvidia-driverd >$S/journal-driverd-reload1.txt 2>&1
	case $st in
	*"pid $holder (sleep) has /dev/nvidiactl open"*) ok "refused while held, the holder named: $st" ;;
	*) nok "status text does not name the holder pid $holder (sleep): '$st'" ;;
	esac
	eq "the old driver still runs" "$(cat /sys/module/nvidia/version 2>&1)" 550.54.14
	eq "nvidia-driverd.service stays active" "$(prop nvidia-driverd ActiveState)" active
	eq "nvidia-persistenced runs again" "$(prop nvidia-persistenced ActiveState)" active
	plain_journal "the holder named" "pid $holder \(sleep\) has /dev/nvidiactl open"
	health=$(bash -c 'exec 3<>/dev/tcp/127.0.0.1/9402 && printf "GET /healthz HTTP/1.0\r\n\r\n" >&3 && head -1 <&3' 2>&1)
	case $health in *" 200 "*) ok "still ready: /healthz $health" ;; *) nok "/healthz: $health" ;; esac
	kill $holder
	wait $holder 2>/dev/null
	systemctl reload nvidia-driverd
	st=$(wait_status "driver $next active" 120)
	journalctl -b -o short-monotonic -u nvidia-driverd >$S/journal-driverd-reload2.txt 2>&1
	case $st in "driver $next active"*) ok "after the holder left: $st" ;; *) nok "status text after the second reload: '$st'" ;; esac
	eq "the new driver runs" "$(cat /sys/module/nvidia/version 2>&1)" "$next"
	for m in nvidia_modeset nvidia_uvm nvidia_drm; do
		eq "$m $next loaded" "$(cat /sys/module/$m/version 2>&1)" "$next"
	done
	eq "the daemon was not restarted" "$(prop nvidia-driverd MainPID)" "$dpid"
	eq "kubelet kept running" "$(prop kubelet MainPID)" "$kpid"
	eq "nvidia-persistenced active" "$(prop nvidia-persistenced ActiveState)" active
	plain_journal "the reload read the new driver-version" "^configuration reloaded: driver-version 550\.54\.14 -> $next"
	plain_journal "the old modules unloaded, nvidia last" "^driver activated: $next .*; unloaded nvidia_[a-z_]+ nvidia_[a-z_]+ nvidia_[a-z_]+ nvidia\$"
	for step in unload firmware libraries modules devices persistenced; do
		plain_journal "step $step" "^step started: $step\$"
	done
	;;
deactivate)
	driver_usable
	if out=$(/opt/bin/nvidia-driverd deactivate 2>&1); then ok "deactivate: $(echo "$out" | tail -1)"; else nok "deactivate failed: $out"; fi
	eq "nvidia-persistenced stopped" "$(prop nvidia-persistenced ActiveState)" inactive
	for m in nvidia nvidia_modeset nvidia_uvm nvidia_drm; do
		eq "$m unloaded" "$(test -e /sys/module/$m/initstate && echo loaded || echo absent)" absent
	done
	for d in nvidiactl nvidia-modeset nvidia-uvm nvidia-uvm-tools; do
		check "/dev/$d removed" test ! -e /dev/$d
	done
	check "the ld.so.conf.d drop-in removed" test ! -e /etc/ld.so.conf.d/nvidia-driverd.conf
	check "libcuda.so.1 no longer in ldconfig -p" sh -c "! ldconfig -p | grep -q 'libcuda.so.1 '"
	check "no CDI spec" sh -c "! ls /var/run/cdi/*nvidia* 2>/dev/null | grep -q ."
	check "the store is kept" test -L /opt/nvidia/current
	if out=$(/opt/bin/nvidia-driverd activate 2>&1); then ok "activate: $(echo "$out" | tail -1)"; else nok "activate failed: $out"; fi
	eq "nvidia back" "$(cat /sys/module/nvidia/version 2>&1)" 550.54.14
	check "/dev/nvidiactl back" test -c /dev/nvidiactl
	check "the drop-in back" test -e /etc/ld.so.conf.d/nvidia-driverd.conf
	check "libcuda.so.1 in ldconfig -p again" sh -c "ldconfig -p | grep -q 'libcuda.so.1 '"
	eq "nvidia-persistenced active again" "$(prop nvidia-persistenced ActiveState)" active
	;;
overlay)
	driver_usable
	for dir in /usr/lib64 /opt/bin; do
		opts=$(findmnt -rn -t overlay -T $dir -o OPTIONS | head -1)
		case ,$opts, in
		*,ro,*) ok "$dir is a read-only overlay ($opts)" ;;
		*) nok "$dir is not a read-only overlay: '$opts'" ;;
		esac
	done
	# Seen from this unit (e2e.service), not only from the daemon's.
	p=$(ldconfig -p | awk '$1 == "libcuda.so.1" {print $NF; exit}')
	eq "libcuda.so.1 resolves through /usr/lib64" "$p" /usr/lib64/libcuda.so.1
	check "nvidia-smi in /opt/bin for other services" test -x /opt/bin/nvidia-smi
	check "the daemon's own binary still there" test -x /opt/bin/nvidia-driverd
	if touch /usr/lib64/e2e-write 2>/dev/null; then nok "/usr/lib64 is writable"; else ok "/usr/lib64 refuses writes"; fi
	n1=$(findmnt -rn -t overlay | wc -l)
	systemctl restart nvidia-driverd
	eq "active again after a restart" "$(prop nvidia-driverd ActiveState)" active
	eq "no overlay stacked by the restart" "$(findmnt -rn -t overlay | wc -l)" "$n1"
	if out=$(/opt/bin/nvidia-driverd deactivate 2>&1); then ok "deactivate: $(echo "$out" | tail -1)"; else nok "deactivate: $out"; fi
	eq "no overlay left" "$(findmnt -rn -t overlay | wc -l)" 0
	check "nvidia-smi gone from /opt/bin" test ! -e /opt/bin/nvidia-smi
	check "libcuda.so.1 gone from the linker cache" sh -c "! ldconfig -p | grep -q 'libcuda.so.1 '"
	check "the daemon's own binary kept" test -x /opt/bin/nvidia-driverd
	;;
sig-unsigned)
	eq "booted with module.sig_enforce=1" "$(grep -o 'module.sig_enforce=1' /proc/cmdline)" module.sig_enforce=1
	eq "the kernel enforces signatures" "$(cat /sys/module/module/parameters/sig_enforce)" Y
	state=$(prop nvidia-driverd ActiveState)
	if [ "$state" != active ]; then ok "nvidia-driverd not ready ($state)"; else nok "nvidia-driverd became active"; fi
	st=$(prop nvidia-driverd StatusText)
	case $st in
	*"module not signed by a key the kernel trusts (module.sig_enforce=Y, module.sig_enforce=1 on the kernel command line): the module has no signature, so the kernel would refuse it; not trying (the kernel trusts "*) ok "status text: $st" ;;
	*) nok "status text does not give the diagnosis: '$st'" ;;
	esac
	if journalctl -b -k -o cat | grep -q 'Loading of unsigned module is rejected'; then
		nok "the kernel was asked to load an unsigned module"
	else
		ok "refused before finit_module: the kernel never saw the unsigned module"
	fi
	eq "nvidia not loaded" "$(test -e /sys/module/nvidia/initstate && echo loaded || echo absent)" absent
	eq "kubelet did not start (Requires=)" "$(prop kubelet ActiveState)" inactive
	;;
sig-untrusted)
	serial=$(cat $S/signing-serial)
	eq "the kernel enforces signatures" "$(cat /sys/module/module/parameters/sig_enforce)" Y
	echo "info trusted keys: $(grep asymmetri /proc/keys | tr '\n' '|')"
	state=$(prop nvidia-driverd ActiveState)
	if [ "$state" != active ]; then ok "nvidia-driverd not ready ($state)"; else nok "nvidia-driverd became active"; fi
	st=$(prop nvidia-driverd StatusText)
	case $st in
	*"signed with a certificate issued by \"nvidia-driverd e2e throwaway key\" (serial $serial), a key the kernel does not trust; it trusts \""*) ok "status text: $st" ;;
	*) nok "status text does not name the certificate, serial $serial and the trusted keys: '$st'" ;;
	esac
	plain_journal "the kernel's own verdict quoted" "the kernel said: .*Loading of module with unavailable key is rejected"
	eq "nvidia not loaded" "$(test -e /sys/module/nvidia/initstate && echo loaded || echo absent)" absent
	eq "kubelet did not start (Requires=)" "$(prop kubelet ActiveState)" inactive
	check "the image is remembered as failed" grep -q '"sha256:' /opt/nvidia/state.json
	;;
real-nogpu)
	eq "nvidia-driverd.service is active" "$(prop nvidia-driverd ActiveState)" active
	st=$(prop nvidia-driverd StatusText)
	case $st in
	"nothing to do: no NVIDIA GPU"*) ok "status text: $st" ;;
	*) nok "status text does not say there is no GPU and nothing to do: '$st'" ;;
	esac
	eq "kubelet started (Requires= the unit)" "$(prop kubelet ActiveState)" active
	eq "kubelet saw nvidia-driverd active" "$(grep driverd= /var/lib/e2e/kubelet.txt 2>&1)" driverd=active
	eq "no restarts" "$(prop nvidia-driverd NRestarts)" 0
	eq "nvidia not loaded" "$(test -e /sys/module/nvidia && echo loaded || echo absent)" absent
	check "nothing became current" test ! -e /opt/nvidia/current
	if journalctl -b -u nvidia-driverd -o cat | grep -Eq '^(fetched|fetch failed|pulling)'; then nok "a download was tried"; else ok "nothing downloaded"; fi
	plain_journal "plan: no GPU, nothing to do" "^planned no-gpu for kernel $rel: no NVIDIA GPU on the PCI bus"
	/opt/bin/nvidia-driverd status --ready >/dev/null 2>&1
	eq "status --ready exits 3: no usable driver" "$?" 3
	ready_time
	;;
real-libs)
	ver=$(cat $S/real-version)
	tree=/opt/nvidia/$ver/$rel
	eq "nvidia-driverd.service is active" "$(prop nvidia-driverd ActiveState)" active
	echo "info status text: $(prop nvidia-driverd StatusText)"
	for lib in libcuda.so.1 libnvidia-ml.so.1 libnvidia-ptxjitcompiler.so.1; do
		p=$(ldconfig -p | awk -v l="$lib" '$1 == l {print $NF; exit}')
		case $p in
		$tree/lib64/*) ok "ldconfig -p: $lib => $p" ;;
		*) nok "ldconfig -p: $lib => '$p', not in $tree/lib64" ;;
		esac
	done
	out=$(/opt/nvidia/current/bin/nvidia-smi 2>&1)
	rc=$?
	case $rc:$out in
	0:*) nok "nvidia-smi succeeded without a driver: $out" ;;
	*"couldn't communicate with the NVIDIA driver"*) ok "NVIDIA's nvidia-smi runs and says: $(echo "$out" | head -1) (exit $rc)" ;;
	*) nok "nvidia-smi (exit $rc): $out" ;;
	esac
	eq "no nvidia module loaded (modules: [])" "$(test -e /sys/module/nvidia && echo loaded || echo absent)" absent
	eq "nvidia-persistenced not started without a driver" "$(prop nvidia-persistenced ActiveState)" inactive
	plain_journal "persistenced left alone" "nvidia-persistenced.service not started: the nvidia module is not loaded"
	check "status shows the wanted driver $ver" grep -Eq "^Wanted +driver $ver" $S/status.txt
	line=$(grep -Eo "$tree \([0-9]+ files, [^)]*\)" $S/status.txt | head -1)
	if [ -n "$line" ]; then ok "status: $line"; else nok "status does not show $tree with its size"; fi
	plain_journal "the real image fetched" "^fetched .*$ver.* into $tree"
	echo "info $(journalctl -b -u nvidia-driverd -o cat | grep -m1 '^fetched')"
	ready_time
	;;
real-load | real-open-load)
	ver=$(cat $S/real-version)
	echo "info $(grep '^flavour=' $S/real-manifest.txt 2>/dev/null) driver $ver"
	# failure-policy fail: the unit fails and is restarted every 15 s;
	# look between two attempts.
	i=0
	until [ "$(prop nvidia-driverd SubState)" = auto-restart ] || [ "$(prop nvidia-driverd ActiveState)" = failed ]; do
		i=$((i + 1))
		if [ $i -gt 600 ]; then break; fi
		sleep 0.2
	done
	state=$(prop nvidia-driverd ActiveState)/$(prop nvidia-driverd SubState)
	case $state in active/*) nok "nvidia-driverd became active" ;; *) ok "nvidia-driverd not ready ($state)" ;; esac
	st=$(prop nvidia-driverd StatusText)
	case $st in
	*"load module nvidia: "*"no NVIDIA GPU the module can drive; the kernel said: "*NVRM:*) ok "status text: $st" ;;
	*) nok "status text does not name nvidia.ko's refusal with the kernel's NVRM lines: '$st'" ;;
	esac
	plain_journal "the refusal with NVRM lines" "load module nvidia: .*the kernel said: .*NVRM:"
	echo "info kernel: $(journalctl -b -k -o cat | grep NVRM | head -3 | tr '\n' '|')"
	# What the daemon loaded for the driver goes again; what the host had
	# loaded before (systemd's modprobe@drm.service loads drm at boot)
	# stays. Between them they cover nvidia.ko's depends=drm.
	line=$(journalctl -b -u nvidia-driverd -o cat | grep -m1 '^failed activation undone: ')
	undone=$(echo "$line" | sed -n 's/^failed activation undone: unloaded \([^;]*\).*/\1/p')
	kept=$(echo "$line" | sed -n 's/.*; kept \(.*\), loaded before$/\1/p')
	if [ -n "$undone" ]; then ok "$line"; else nok "no prerequisites unloaded: '$line'"; fi
	case " $undone $kept " in
	*" drm "*) ok "drm (nvidia.ko's depends=) resolved from modules.dep" ;;
	*) nok "drm is neither unloaded nor kept: '$line'" ;;
	esac
	for m in $undone; do
		check "$m is unloaded" test ! -e /sys/module/$m/initstate
	done
	for m in $kept; do
		check "$m, loaded before the daemon, is kept" test -e /sys/module/$m/initstate
	done
	eq "nvidia not loaded" "$(test -e /sys/module/nvidia/initstate && echo loaded || echo absent)" absent
	check "no ld.so.conf.d drop-in (real-libs' one removed, on its disk)" test ! -e /etc/ld.so.conf.d/nvidia-driverd.conf
	check "libcuda.so.1 no longer in ldconfig -p" sh -c "! ldconfig -p | grep -q 'libcuda.so.1 '"
	check "no /dev/nvidiactl" test ! -e /dev/nvidiactl
	check "no overlay mounts" sh -c "test -z \"\$(findmnt -rn -t overlay)\""
	check "no CDI spec" sh -c "! ls /etc/cdi/*nvidia* /var/run/cdi/*nvidia* 2>/dev/null | grep -q ."
	eq "nvidia-persistenced not started" "$(prop nvidia-persistenced ActiveState)" inactive
	eq "kubelet did not start (Requires=)" "$(prop kubelet ActiveState)" inactive
	start=$(prop nvidia-driverd ExecMainStartTimestampMonotonic)
	end=$(prop nvidia-driverd ExecMainExitTimestampMonotonic)
	if [ "$end" -gt "$start" ] 2>/dev/null; then echo "info verdict_ms=$(( (end - start) / 1000 ))"; fi
	;;
*)
	nok "unknown scenario $scenario"
	;;
esac
if [ $fails = 0 ]; then echo "RESULT pass"; else echo "RESULT fail ($fails)"; fi
