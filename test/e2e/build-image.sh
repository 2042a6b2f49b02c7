#!/bin/bash
# build-image.sh: the guest disk image, kernel and initrd, cached by inputs.
# Prints the directory holding disk.img, vmlinuz, initrd.img and release
# (the guest's standard kernel), and vmlinuz-rt, initrd-rt.img and
# release-rt (its -rt kernel, the one an "OS update" boots into).
#
# The image holds: the Debian rootfs (build-rootfs.sh); the repo's units as
# `nvidia-driverd install-units --root` writes them (the binary itself comes
# from the host share at each boot, see guest/e2e-setup), nvidia-driverd and
# the kubelet stand-in enabled; e2e-setup.service and e2e.service, which
# run the scenario's checks and power the VM off.
. "$(dirname "$0")/lib.sh"
need_root "$@"
need e2fsprogs
rootfs=$("$E2E_DIR/build-rootfs.sh")
bin=$(build_binary)
units=$(cd "$REPO/systemd" && find . -type f ! -name '*.go' | sort | xargs sha256sum | sha256sum | cut -c1-16)
k=$(key "$rootfs" "$units" "$E2E_DIR/build-image.sh" "$E2E_DIR"/guest/* v2)
out=$CACHE/image-$k
if [ -s "$out/disk.img" ]; then
	echo "$out"
	exit 0
fi
t0=$(date +%s)
log "building guest image $out"
stage=$CACHE/stage.$$
rm -rf "$stage" "$out.tmp"
mkdir -p "$stage" "$out.tmp"
trap 'rm -rf "$stage" "$out.tmp"' EXIT
tar -C "$stage" -xf "$rootfs"

"$bin" --root "$stage" install-units --binary=false >&2
install -m 0755 "$E2E_DIR/guest/e2e-setup" "$stage/usr/local/sbin/e2e-setup"
for u in e2e-setup.service e2e.service e2e-registry.service fake-update-engine.service kubelet.service; do
	install -m 0644 "$E2E_DIR/guest/$u" "$stage/etc/systemd/system/$u"
done
install -D -m 0644 "$E2E_DIR/guest/registry.yml" "$stage/etc/e2e/registry.yml"
install -D -m 0644 "$E2E_DIR/guest/com.coreos.update1.conf" "$stage/etc/dbus-1/system.d/com.coreos.update1.conf"
systemctl --root="$stage" enable nvidia-driverd.service kubelet.service e2e-setup.service e2e.service e2e-registry.service fake-update-engine.service >&2
# The package's own registry service listens on every interface; the
# scenarios start theirs (e2e-registry.service) only when they want one.
systemctl --root="$stage" disable docker-registry.service >&2 || true
systemctl --root="$stage" mask docker-registry.service >&2
# Users from the repo's sysusers.d file (nvidia-persistenced), and the
# tmpfiles directories that need them.
systemd-sysusers --root="$stage" >&2
echo e2e-guest >"$stage/etc/hostname"
echo '/dev/vda / ext4 rw,errors=remount-ro 0 1' >"$stage/etc/fstab"
# Quiet, quick boots: no getty waiting on the console, no timers.
systemctl --root="$stage" mask serial-getty@ttyS0.service getty@tty1.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer >&2 || true

release=$(ls "$stage/lib/modules" | grep -v -- -rt-)
release_rt=$(ls "$stage/lib/modules" | grep -- -rt-)
[ "$(echo "$release" | wc -l)" = 1 ] && [ "$(echo "$release_rt" | wc -l)" = 1 ] ||
	die "expected one standard and one -rt kernel in the rootfs, found: $(ls "$stage/lib/modules")"
cp "$stage/boot/vmlinuz-$release" "$out.tmp/vmlinuz"
cp "$stage/boot/initrd.img-$release" "$out.tmp/initrd.img"
echo "$release" >"$out.tmp/release"
cp "$stage/boot/vmlinuz-$release_rt" "$out.tmp/vmlinuz-rt"
cp "$stage/boot/initrd.img-$release_rt" "$out.tmp/initrd-rt.img"
echo "$release_rt" >"$out.tmp/release-rt"
cp "$stage/usr/lib/os-release" "$out.tmp/os-release"
mke2fs -q -t ext4 -L root -d "$stage" "$out.tmp/disk.img" 3G >&2
rm -rf "$out"
mv "$out.tmp" "$out"
prune "$out" "$CACHE"/image-*
log "guest image built in $(( $(date +%s) - t0 )) s (kernels $release, $release_rt)"
echo "$out"
