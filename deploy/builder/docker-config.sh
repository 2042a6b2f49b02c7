#!/bin/bash
# docker-config.sh: write a Docker config with credentials for one
# registry, for nvidia-driverd (which reads $DOCKER_CONFIG/config.json).
#
#   REGISTRY_USERNAME=u REGISTRY_PASSWORD=p docker-config.sh REGISTRY DIR
#
# REGISTRY is a host[:port] (the part of the repository before the first
# '/'); DIR/config.json is written mode 0600. With both variables empty,
# an empty config is written (anonymous access).
# Exit status: 0 written, 2 bad arguments.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

(($# == 2)) || usage_error "usage: docker-config.sh REGISTRY DIR"
registry=$1 dir=$2
[[ $registry =~ ^[A-Za-z0-9.-]+(:[0-9]+)?$ ]] || usage_error "REGISTRY '$registry': want host or host:port"
user=${REGISTRY_USERNAME:-} pass=${REGISTRY_PASSWORD:-}
[[ -n $user && -n $pass || -z $user && -z $pass ]] || usage_error "set both REGISTRY_USERNAME and REGISTRY_PASSWORD, or neither"

mkdir -p "$dir"
umask 077
if [[ -z $user ]]; then
	printf '{"auths": {}}\n' >"$dir/config.json"
else
	auth=$(printf '%s:%s' "$user" "$pass" | base64 -w0)
	printf '{"auths": {"%s": {"auth": "%s"}}}\n' "$registry" "$auth" >"$dir/config.json"
fi
chmod 600 "$dir/config.json"
