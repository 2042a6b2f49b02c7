#!/bin/bash
# check-hermetic.sh: the stub modules are built from the guest's rootfs
# alone. Builds them afresh in a mount namespace where the host's /usr/src
# and /lib/modules are empty, then checks that each module's vermagic names
# the guest's kernel. A build that reached for the host's headers or
# modules would fail here, whatever distribution the host runs.
. "$(dirname "$0")/lib.sh"
need_root "$@"
root=$("$E2E_DIR/build-root.sh")
release=$(ls "$root/lib/modules" | grep -v -- -rt- | head -n 1)
[ -n "$release" ] || die "no kernel in $root/lib/modules"
tmp=$(mktemp -d "$CACHE/hermetic.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
E2E_STUBKO=$tmp/ko unshare -m --propagation private bash -euc '
	for d in /usr/src /lib/modules; do
		[ -d "$d" ] && mount -t tmpfs -o ro,size=1m hidden "$d"
		[ -z "$(ls -A "$d" 2>/dev/null)" ] || { echo "$d is not hidden" >&2; exit 1; }
	done
	exec "$1/build-driver.sh" "$2" "$3"
' check "$E2E_DIR" "$release" "$tmp/out" >/dev/null
n=0
for ko in "$tmp"/ko/*.ko; do
	magic=$(tr '\0' '\n' <"$ko" | sed -n 's/^vermagic=//p')
	case $magic in
	"$release "*) n=$((n + 1)) ;;
	*) die "${ko##*/}: vermagic \"$magic\", want the guest's $release" ;;
	esac
done
[ "$n" = 4 ] || die "built $n modules, want 4"
echo "PASS hermetic-build ($n modules for $release, built with the host's /usr/src and /lib/modules hidden)"
