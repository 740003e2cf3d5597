#!/usr/bin/env bash
# The base image tests/image/build.sh builds on, made from Debian's mirror (no registry needed).
#
#   bash tests/image/base.sh      # prints the base image's name on the last stdout line
#
# The Dockerfile's default base (python:3.11-slim-trixie) lives in a registry this machine cannot
# reach, so this is a stand-in with the same contract, made by mmdebstrap: Debian trixie with
# python3 (3.13) as `python`, ca-certificates, and pip installed from Debian's pip wheel into
# /usr/local the way the python image has it (uninstallable with `pip uninstall`, no
# EXTERNALLY-MANAGED marker). Its dpkg and apt settings are those of Debian's slim images.
#
# Cached twice, keyed by this file's content (edit it, or delete the tarball, to rebuild): as a
# tarball under ${XDG_CACHE_HOME:-~/.cache}/ray-gitops/image/ and, imported from it, as the local
# image localhost/ray-gitops-base:trixie-<hash>. Needs root, podman and, to make the tarball,
# mmdebstrap. The caller holds the cache lock (build.sh does).
set -euo pipefail

suite=trixie
mirror=http://deb.debian.org/debian

log() { printf 'image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

cache="${XDG_CACHE_HOME:-$HOME/.cache}/ray-gitops/image"
key="$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)"
base="localhost/ray-gitops-base:$suite-$key"
tarball="$cache/base-$suite-$key.tar"
mkdir -p "$cache"

if podman image exists "$base"; then
    printf '%s\n' "$base"
    exit 0
fi

if [[ ! -s "$tarball" ]]; then
    command -v mmdebstrap >/dev/null || die "mmdebstrap is not installed (needed once, to make the base image)"
    log "making the $suite base with mmdebstrap from $mirror into $tarball"
    start=$SECONDS
    # Debian's pip wheel (python3-pip-whl) installs itself into /usr/local, then the .deb is purged.
    pip_bootstrap='w=$(ls /usr/share/python-wheels/pip-*.whl) && python3 "$w/pip" install --no-index --no-cache-dir --disable-pip-version-check --root-user-action=ignore "$w"'
    # The dpkg and apt options are kept in the base's /etc/dpkg/dpkg.cfg.d and /etc/apt/apt.conf.d,
    # so they also hold for the Dockerfile's apt-get: no docs but the copyright files, no man pages
    # or locales, no .deb files or package caches kept (577 MB instead of 393 MB image without them).
    rm -f "$tarball.tmp"
    timeout 600 mmdebstrap --variant=minbase --format=tar \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/groff/*' \
        --dpkgopt='path-exclude=/usr/share/lintian/*' \
        --aptopt='DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; }' \
        --aptopt='APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; }' \
        --aptopt='Dir::Cache::pkgcache ""' --aptopt='Dir::Cache::srcpkgcache ""' \
        --aptopt='Acquire::Languages "none"' --aptopt='Acquire::GzipIndexes "true"' \
        --include=python3,python-is-python3,python3-pip-whl,ca-certificates \
        --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
        --customize-hook="chroot \"\$1\" sh -c '$pip_bootstrap'" \
        --customize-hook='chroot "$1" apt-get purge -y -q python3-pip-whl' \
        --customize-hook='chroot "$1" python -m pip --version' \
        "$suite" "$tarball.tmp" "$mirror" >&2 || { rm -f "$tarball.tmp"; die "mmdebstrap failed"; }
    mv "$tarball.tmp" "$tarball"
    log "base tarball made in $((SECONDS - start)) s"
fi

log "importing $tarball as $base"
timeout 120 podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$tarball" "$base" >/dev/null
printf '%s\n' "$base"
