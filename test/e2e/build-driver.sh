#!/bin/bash
# build-driver.sh RELEASE OUT: stub modules for kernel RELEASE (Kbuild
# against the exact linux-headers-RELEASE, cached), laid out in driver trees
# under OUT:
#   OUT/tree          a driver tree as a driver build leaves it: four stub
#                     modules, libcuda/libnvidia-ml with SONAMEs, nvidia-smi
#                     and nvidia-persistenced stubs, firmware, modprobe.d
#   OUT/tree-badmagic the same modules with their vermagic release rewritten
#                     (same length, so only the string differs): a kernel
#                     with CONFIG_MODVERSIONS would still load them
#   OUT/tree-broken   driver BROKEN_VERSION whose nvidia.ko fails init
#                     (its modprobe.d sets the stub's e2e_fail_init=1)
#   OUT/tree-next     driver BROKEN_VERSION, working: a live upgrade's target
#   OUT/tree-signed   the modules signed by a throwaway key (its serial in
#                     OUT/signing-serial) that the kernel does not trust
. "$(dirname "$0")/lib.sh"
[ $# = 2 ] || die "usage: build-driver.sh RELEASE OUT"
need_root "$@"
release=$1 out=$2
# Everything is compiled in a chroot of the guest's own rootfs, with its
# headers for exactly this kernel and its compiler: the host's
# distribution, /usr/src and /lib/modules play no part (check-hermetic.sh).
root=$("$E2E_DIR/build-root.sh")
[ -d "$root/usr/src/linux-headers-$release" ] ||
	die "the guest rootfs has no headers for $release (it has: $(ls "$root/usr/src" | tr '\n' ' '))"
k=$(key "$release" "$E2E_DIR"/stubko/* "from ${root##*/}" v2)
ko=$CACHE/stubko-$k
[ -z "${E2E_STUBKO:-}" ] || ko=$E2E_STUBKO # check-hermetic.sh: a fresh build
if [ ! -s "$ko/nvidia.ko" ]; then
	log "building stub modules for $release in the guest rootfs"
	work=$root/tmp/stubko.$$
	rm -rf "$work"
	cp -r "$E2E_DIR/stubko" "$work"
	in_root "$root" make -s -C "/usr/src/linux-headers-$release" M="/tmp/stubko.$$" modules >"$CACHE/stubko.log" 2>&1 ||
		die "building the stub modules failed: the end of $CACHE/stubko.log: $(tail -n 5 "$CACHE/stubko.log")"
	rm -rf "$ko"
	mkdir -p "$ko"
	cp "$work"/*.ko "$ko/"
	rm -rf "$work"
fi

# stub_lib SONAME VERSION OUT: a shared library with that SONAME, built by
# the guest rootfs's gcc.
stub_lib() {
	local tmp=/tmp/stublib.$$
	mkdir -p "$root$tmp"
	echo "const char nvidia_e2e_stub[] = \"$2\";" >"$root$tmp/stub.c"
	in_root "$root" gcc -shared -fPIC -nostdlib -Wl,-soname,"$1" -o "$tmp/lib.so" "$tmp/stub.c"
	install -m 0755 "$root$tmp/lib.so" "$3"
	rm -rf "${root:?}$tmp"
}

tree() { # tree DIR KO_DIR [DRIVER_VERSION]
	local t=$1 m lib DRIVER_VERSION=${3:-$DRIVER_VERSION}
	rm -rf "$t"
	mkdir -p "$t/lib/modules/$release/video" "$t/lib64" "$t/bin" "$t/firmware/nvidia/$DRIVER_VERSION" "$t/etc/modprobe.d"
	for m in nvidia nvidia-modeset nvidia-uvm nvidia-drm; do
		install -m 0644 "$2/$m.ko" "$t/lib/modules/$release/video/$m.ko"
	done
	for lib in libcuda.so libnvidia-ml.so; do
		stub_lib "$lib.1" "$DRIVER_VERSION" "$t/lib64/$lib.$DRIVER_VERSION"
		ln -s "$lib.$DRIVER_VERSION" "$t/lib64/$lib.1"
	done
	printf '#!/bin/sh\necho "NVIDIA-SMI stub  Driver Version: $(cat /sys/module/nvidia/version)"\n' >"$t/bin/nvidia-smi"
	# nvidia-persistenced.service is Type=forking with a PIDFile.
	cat >"$t/bin/nvidia-persistenced" <<'STUB'
#!/bin/sh
# nvidia-persistenced stand-in: daemonizes and leaves its pid file.
mkdir -p /run/nvidia-persistenced
sleep infinity </dev/null >/dev/null 2>&1 &
echo $! >/run/nvidia-persistenced/nvidia-persistenced.pid
STUB
	chmod 0755 "$t/bin/"*
	echo "stub firmware" >"$t/firmware/nvidia/$DRIVER_VERSION/gsp.bin"
	# The config's module-params (NVreg_EnableMSI=1) must win over this.
	echo "options nvidia NVreg_EnableMSI=0" >"$t/etc/modprobe.d/nvidia.conf"
}

mkdir -p "$out"
tree "$out/tree" "$ko"

# A release string of the same length that is not the kernel's.
fake=$(echo "$release" | sed -E 's/^([0-9]+\.[0-9]+\.[0-9]+-)([0-9])/\1X/; s/X/9/')
[ "$fake" != "$release" ] || fake=$(echo "$release" | sed -E 's/^([0-9]+\.[0-9]+\.[0-9]+-)9/\18/')
[ "${#fake}" = "${#release}" ] && [ "$fake" != "$release" ] || die "cannot make a fake release from $release"
bad=$out/ko-badmagic
rm -rf "$bad"
cp -r "$ko" "$bad"
for f in "$bad"/*.ko; do
	FROM="vermagic=$release " TO="vermagic=$fake " perl -0777 -pi -e 's/\Q$ENV{FROM}\E/$ENV{TO}/ or die "no vermagic in $ARGV\n"' "$f"
done
tree "$out/tree-badmagic" "$bad"
echo "$fake" >"$out/fake-release"

# A newer driver that loads but fails to initialise: the version string is
# rewritten in place (same length) and the tree's options make init fail.
broken=$out/ko-broken
rm -rf "$broken"
cp -r "$ko" "$broken"
for f in "$broken"/*.ko; do
	FROM="version=$DRIVER_VERSION" TO="version=$BROKEN_VERSION" perl -0777 -pi -e 's/\Q$ENV{FROM}\E/$ENV{TO}/g' "$f"
done
tree "$out/tree-broken" "$broken" "$BROKEN_VERSION"
echo "options nvidia NVreg_EnableMSI=0 e2e_fail_init=1" >"$out/tree-broken/etc/modprobe.d/nvidia.conf"
# The same newer driver, working: what a live upgrade moves to.
tree "$out/tree-next" "$broken" "$BROKEN_VERSION"

# The modules signed with a throwaway key the kernel does not trust, by
# the kernel's own sign-file from the build root.
signkey=$CACHE/e2e-signing-key.pem
if [ ! -s "$signkey" ]; then
	need openssl
	openssl req -new -nodes -utf8 -sha256 -days 36500 -batch -x509 -newkey rsa:2048 \
		-subj "/CN=nvidia-driverd e2e throwaway key/O=nvidia-driverd e2e" \
		-keyout "$signkey.tmp" -out "$signkey.tmp.crt" 2>/dev/null
	cat "$signkey.tmp" "$signkey.tmp.crt" >"$signkey.new"
	rm -f "$signkey.tmp" "$signkey.tmp.crt"
	mv "$signkey.new" "$signkey"
fi
signfile=$(cd "$root" && ls -d usr/lib/linux-kbuild-*/scripts/sign-file | head -n 1)
[ -n "$signfile" ] || die "no sign-file in the build root's linux-kbuild"
signed=$out/ko-signed
rm -rf "$signed"
mkdir -p "$signed" "$root/tmp/sign.$$"
cp "$signkey" "$root/tmp/sign.$$/key.pem"
for f in "$ko"/*.ko; do
	cp "$f" "$root/tmp/sign.$$/"
	in_root "$root" "/$signfile" sha256 "/tmp/sign.$$/key.pem" "/tmp/sign.$$/key.pem" "/tmp/sign.$$/${f##*/}"
	mv "$root/tmp/sign.$$/${f##*/}" "$signed/"
done
rm -rf "${root:?}/tmp/sign.$$"
tree "$out/tree-signed" "$signed"
openssl x509 -in "$signkey" -noout -serial | sed 's/^serial=//' | tr 'A-F' 'a-f' | sed 's/^0*//' >"$out/signing-serial"
log "driver trees in $out (bad vermagic: $fake)"
