# debfetch.sh: sourced by the fixture scripts that take files out of a
# Debian package without installing it. The caller defines log MESSAGE.

# need_tools WHY TOOL...: exit 1 unless every TOOL is on PATH.
need_tools() {
	local why=$1 tool
	shift
	for tool in "$@"; do
		if ! command -v "$tool" >/dev/null; then
			log "need $tool (a Debian-based system) to $why"
			exit 1
		fi
	done
}

# fetch_deb WORK NAME_COMMAND...: runs NAME_COMMAND to name the package,
# downloads it into WORK with apt-get download, and prints the .deb's
# path. When naming or downloading fails it runs apt-get update and tries
# once more; it exits 1 unless exactly one .deb arrived.
fetch_deb() {
	local work=$1 debs
	shift
	if ! _fetch_deb_once "$work" "$@"; then
		log "download failed; running apt-get update and retrying"
		apt-get update -q >&2
		if ! _fetch_deb_once "$work" "$@"; then
			log "download failed again after apt-get update"
			exit 1
		fi
	fi
	debs=("$work"/*.deb)
	if [[ ${#debs[@]} -ne 1 || ! -f "${debs[0]}" ]]; then
		log "expected one .deb in $work, found: ${debs[*]}"
		exit 1
	fi
	printf '%s\n' "${debs[0]}"
}

_fetch_deb_once() {
	local work=$1 pkg
	shift
	pkg=$("$@") || return 1
	[[ -n "$pkg" ]] || return 1
	log "downloading $pkg"
	(cd "$work" && apt-get download -q "$pkg" >&2) || return 1
}
