#!/bin/bash
# build-rootfs.sh: the guest's Debian root filesystem as a cached tarball.
# Prints the tarball's path. bookworm-updates and bookworm-security are
# included so that the guest gets the suite's current kernels, and the
# kernels' headers and the compiler (BUILD_PACKAGES) come from the same run,
# so they match the kernels exactly: modules are built in a chroot of this
# rootfs (build-root.sh), never against the host's own headers.
. "$(dirname "$0")/lib.sh"
need_root "$@"
need mmdebstrap
k=$(key "$SUITE" "$MIRROR" "$SECURITY_MIRROR" "$PACKAGES" "$BUILD_PACKAGES" v2)
out=$CACHE/rootfs-$k.tar
if [ ! -s "$out" ]; then
	log "mmdebstrap $SUITE -> $out (log: $CACHE/rootfs.log)"
	t0=$(date +%s)
	mmdebstrap --variant=minbase --format=tar --include="$PACKAGES,$BUILD_PACKAGES" \
		--components=main --aptopt='Acquire::Retries "3"' \
		--customize-hook='rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*' \
		"$SUITE" "$out.tmp" \
		"deb $MIRROR $SUITE main" \
		"deb $MIRROR $SUITE-updates main" \
		"deb $SECURITY_MIRROR $SUITE-security main" >"$CACHE/rootfs.log" 2>&1 ||
		die "mmdebstrap failed: the end of $CACHE/rootfs.log: $(tail -n 5 "$CACHE/rootfs.log")"
	mv "$out.tmp" "$out"
	prune "$out" "$CACHE"/rootfs-*.tar
	log "rootfs built in $(( $(date +%s) - t0 )) s"
fi
echo "$out"
