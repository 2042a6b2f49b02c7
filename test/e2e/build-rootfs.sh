#!/bin/bash
# build-rootfs.sh: the guest's Debian root filesystem as a cached tarball.
# Prints the tarball's path. bookworm-updates and bookworm-security are
# included so that the guest kernel is the one whose headers the host gets.
. "$(dirname "$0")/lib.sh"
need mmdebstrap
k=$(key "$SUITE" "$MIRROR" "$SECURITY_MIRROR" "$PACKAGES" v1)
out=$CACHE/rootfs-$k.tar
if [ ! -s "$out" ]; then
	log "mmdebstrap $SUITE ($PACKAGES) -> $out"
	t0=$(date +%s)
	mmdebstrap --variant=minbase --format=tar --include="$PACKAGES" \
		--components=main --aptopt='Acquire::Retries "3"' \
		--customize-hook='rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*' \
		"$SUITE" "$out.tmp" \
		"deb $MIRROR $SUITE main" \
		"deb $MIRROR $SUITE-updates main" \
		"deb $SECURITY_MIRROR $SUITE-security main" >&2
	mv "$out.tmp" "$out"
	log "rootfs built in $(( $(date +%s) - t0 )) s"
fi
echo "$out"
