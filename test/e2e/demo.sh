#!/bin/bash
# demo.sh: `make demo`. Boots the e2e VM through scenarios 1-3 (first boot,
# reboot with the registry stopped, OS update into another kernel) and
# narrates each: what the boot was about, the daemon's journal lines with
# their structured fields, `systemctl status` and `nvidia-driverd status`
# as the guest saw them. The first run builds the VM image (a few minutes,
# cached); later runs take about a minute and a half.
. "$(dirname "$0")/lib.sh"
need_root "$@"
need python3
# The builds' and boots' own output (mmdebstrap, Kbuild, every check's
# line) goes to a log file; the terminal gets a line per step.
export E2E_LOG=$CACHE/demo.log
: >"$E2E_LOG"

bold= plain=
if [ -t 1 ]; then bold=$(tput bold 2>/dev/null || true) plain=$(tput sgr0 2>/dev/null || true); fi
say() { printf '%s%s%s\n' "$bold" "$*" "$plain"; }

# journal FILE: the daemon's journal (journalctl -o json) as
# "seconds-since-boot message key=value ...".
journal() {
	python3 - "$1" <<'PYEOF'
import json, sys
skip = {"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "SYSLOG_FACILITY", "SYSLOG_PID", "TID",
        "INVOCATION_ID", "CODE_FILE", "CODE_LINE", "CODE_FUNC", "UNIT", "JOB_ID", "JOB_TYPE",
        "JOB_RESULT", "LOGGER", "CALLER", "STACKTRACE"}
names = {"3ea548b9b02cbfb5d41b082b5d85481b": "driver-activated", "d7a7d4b6c1cf0c146ab98f513c7c2a52": "driver-switched",
         "c526509b79eaf661b2e558bb11da9cbe": "activation-failed", "d84655e3b7866311c06038b0911822cf": "fetch-failed"}
for line in open(sys.argv[1]):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    ours = e.get("_COMM") == "nvidia-driverd"
    msg = e.get("MESSAGE")
    if not (ours or e.get("_COMM") == "systemd") or msg is None or msg.startswith("step finished"):
        continue
    t = int(e.get("__MONOTONIC_TIMESTAMP", "0")) / 1e6
    if msg.startswith("step started"):
        print("  %7.2fs    step %s" % (t, e.get("STEP", "?")))
        continue
    fields = []
    for k, v in sorted(e.items()):
        # The message says these in words already.
        if k in ("KERNEL", "DRIVER", "ACTION", "REASON", "TREE", "STEP", "IMAGE", "TAG"):
            continue
        if v == "" or v in msg or v.replace(",", " ") in msg:
            continue  # empty (cdi=, mounted=), or said in the message already
        if k.startswith("_") or k in skip or not isinstance(v, str):
            continue
        if k == "MESSAGE_ID":
            if v not in names:
                continue
            v = names[v]
        fields.append("%s=%s" % (k.lower(), v if len(v) < 160 else v[:157] + "..."))
    print("  %7.2fs  %s  %s" % (t, msg, " ".join(fields)))
PYEOF
}

show() { # show SCENARIO TITLE TEXT
	local s=$CACHE/run/share-$1
	echo
	say "== $2"
	fold -s -w 78 <<<"$3" | sed 's/^/   /'
	echo
	say "-- journalctl -u nvidia-driverd (this boot)"
	journal "$s/journal-driverd.json"
	echo
	say "-- systemctl status nvidia-driverd"
	sed 's/^/  /' "$s/systemctl-status.txt"
	echo
	say "-- nvidia-driverd status"
	sed 's/^/  /' "$s/status.txt"
	echo
	say "-- what kubelet (a stand-in ordered by the shipped drop-in) saw when it started"
	sed 's/^/  /' "$s/kubelet.txt" 2>/dev/null || echo "  (kubelet did not start)"
	echo
	say "-- checks: $(grep -c '^ok' "$s/result.txt") passed, $(grep -c '^not ok' "$s/result.txt") failed$(grep -o '^info ready_ms=[0-9]*' "$s/result.txt" | sed 's/^info //' | sed 's/ready_ms=/; daemon start to READY=1: /; s/$/ ms/')"
	grep '^not ok' "$s/result.txt" | sed 's/^/  /' || true
}

say "nvidia-driverd demo: a Debian 12 VM (qemu, software emulation) with real systemd, a real"
say "kernel and finit_module, stub NVIDIA modules built for its two kernels, and a registry"
say "on the guest's loopback. The VM has no GPU: 'status' says 'GPUs none found' beside the"
say "loaded stub driver (the demo runs with require-gpu: false). Building and booting,"
say "a line per step (the builds' own output: $E2E_LOG)..."
rc=0
summary=$("$E2E_DIR/run-e2e.sh" first-boot reboot osupdate) || rc=$?
kernel_of() { sed -n 's/^Kernel *\([^ ]*\).*/\1/p' "$CACHE/run/share-$1/status.txt" 2>/dev/null; }
ready_of() { grep -o '^info ready_ms=[0-9]*' "$CACHE/run/share-$1/result.txt" 2>/dev/null | sed 's/^info ready_ms=//'; }
release=$(kernel_of first-boot)
rt_release=$(kernel_of osupdate)
show first-boot "1. First boot: no driver installed" \
	"The store /opt/nvidia is empty. nvidia-driverd.service (Type=notify) finds no tree for kernel $release, pulls debian12-$release-550.54.14 from the registry, checks every module's vermagic, switches /opt/nvidia/current, loads nvidia, nvidia-modeset, nvidia-uvm and nvidia-drm with NVreg_EnableMSI=1 from the config, makes the device nodes, runs ldconfig, starts nvidia-persistenced and only then sends READY=1. kubelet (Requires=/After= the unit) starts after that."
show reboot "2. Second boot, same kernel, registry stopped" \
	"Nothing to download: the installed tree matches the kernel, so the daemon loads it and sends READY=1 $(ready_of reboot) ms after it started."
show osupdate "3. OS update: a new kernel and a new os-release" \
	"The host now boots the -rt kernel (another vermagic) and os-release says version 13. The installed tree no longer matches, so the daemon pulls debian13-$rt_release-550.54.14, switches to it and loads it; the old tree stays as /opt/nvidia/previous for rollback."
echo
say "== summary"
echo "$summary"
exit $rc
