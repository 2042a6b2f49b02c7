#!/bin/bash
# build-root.sh: the guest's rootfs (build-rootfs.sh) extracted once into
# the cache, to chroot into (lib.sh's in_root) and build modules with its
# own kernel headers and compiler. Prints the directory.
. "$(dirname "$0")/lib.sh"
need_root "$@"
tarball=$("$E2E_DIR/build-rootfs.sh")
out=$CACHE/buildroot-$(key "from ${tarball##*/}" v1)
if [ ! -e "$out/.complete" ]; then
	log "extracting the build root $out"
	rm -rf "$out"
	mkdir -p "$out"
	tar -C "$out" -xf "$tarball"
	touch "$out/.complete"
	prune "$out" "$CACHE"/buildroot-*
	rm -rf "$CACHE"/stubko-* # built in the root just replaced
fi
echo "$out"
