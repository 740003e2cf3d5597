#!/usr/bin/env bash
# Build the ray-gitops image from the Dockerfile with podman, without a Docker engine or a registry.
#
#   bash tests/image/build.sh [TAG]      # TAG defaults to localhost/ray-gitops:dev
#
# Prints the image tag on the last stdout line; progress goes to stderr. Needs root, podman, runc
# and, for the first base build only, mmdebstrap: `apt-get install podman buildah runc mmdebstrap`.
#
# The base comes from tests/image/base.sh (Debian trixie from Debian's mirror, cached) and is passed
# as the Dockerfile's BASE_IMAGE. The build is `podman build --pull=never --isolation chroot` with
# podman's layer cache, so a second build with unchanged sources takes seconds; a change to
# pyproject.toml, README.md or reconciler/ (the build context) re-runs the pip step.
#
# pip in the builder stage reaches PyPI through this machine's TLS-inspecting egress, so the host's
# CA bundle is handed to that one RUN step as the build secret `ca-bundle` (mounted read-only at
# /run/secrets/ca-bundle, never stored in a layer). RAY_GITOPS_BUILD_CA_BUNDLE names another file.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
tag="${1:-localhost/ray-gitops:dev}"

log() { printf 'image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v podman >/dev/null || die "podman is not installed (apt-get install podman buildah runc mmdebstrap)"
ca="${RAY_GITOPS_BUILD_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
[[ -s "$ca" ]] || die "no CA bundle at $ca (set RAY_GITOPS_BUILD_CA_BUNDLE)"

cache="${XDG_CACHE_HOME:-$HOME/.cache}/ray-gitops/image"
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9  # one builder at a time; a concurrent caller waits and then finds the result

base="$(bash "$here/base.sh" | tail -n 1)"

log "building $tag from $base"
start=$SECONDS
timeout -k 30 600 podman build --pull=never --isolation chroot --layers \
    --build-arg "BASE_IMAGE=$base" \
    --secret "id=ca-bundle,src=$ca" \
    --tag "$tag" --file "$repo/Dockerfile" "$repo" >&2
log "image built in $((SECONDS - start)) s"
printf '%s\n' "$tag"
