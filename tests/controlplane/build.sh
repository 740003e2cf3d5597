#!/usr/bin/env bash
# Build kube-apiserver, etcd and kubectl from Go modules (envtest-style test control plane).
#
# Prints the assets directory (holding the three binaries) on the last stdout line; all progress
# goes to stderr. Idempotent: does nothing when the versioned cache directory is already complete.
# If KUBEBUILDER_ASSETS names a directory with kube-apiserver and etcd, that directory is used and
# nothing is built. Also makes sure the KubeRay ray-operator module (CRDs) is in the module cache.
#
# Versions: tests/controlplane/versions.env. Cache: ${XDG_CACHE_HOME:-~/.cache}/ray-gitops/controlplane.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

log() { printf 'controlplane: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# go mod download -json FIELD for one module@version (outside any module, so no go.mod is touched).
mod_field() {
    local field="$1" modver="$2" json
    json="$(cd / && GOFLAGS=-mod=mod go mod download -json "$modver")" || die "go mod download $modver failed: $json"
    sed -n "s/^\t\"$field\": \"\(.*\)\",\{0,1\}\$/\1/p" <<<"$json"
}

ensure_kuberay_crds() {
    local dir
    dir="$(mod_field Dir "github.com/ray-project/kuberay/ray-operator@v$KUBERAY_VERSION")"
    [[ -f "$dir/config/crd/bases/ray.io_rayclusters.yaml" ]] || die "no KubeRay CRDs under $dir"
    log "KubeRay CRDs: $dir/config/crd/bases"
}

have_binaries() {
    local dir="$1" bin
    for bin in kube-apiserver etcd "${@:2}"; do
        [[ -x "$dir/$bin" ]] || return 1
    done
}

if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
    have_binaries "$KUBEBUILDER_ASSETS" || die "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks kube-apiserver or etcd"
    ensure_kuberay_crds
    printf '%s\n' "$KUBEBUILDER_ASSETS"
    exit 0
fi

command -v go >/dev/null || die "go is not installed (Go >= 1.26 is needed to build the control plane)"

root="${XDG_CACHE_HOME:-$HOME/.cache}/ray-gitops/controlplane"
dest="$root/k8s-$K8S_VERSION-etcd-$ETCD_VERSION"
mkdir -p "$root"

exec 9>"$root/.lock"
flock 9  # one builder at a time; a concurrent caller waits and then finds the result

if ! have_binaries "$dest" kubectl; then
    start=$SECONDS
    k8s_minor_patch="${K8S_VERSION#*.}"
    staging_version="v0.$k8s_minor_patch"
    k8s_gomod="$(mod_field GoMod "k8s.io/kubernetes@v$K8S_VERSION")"
    [[ -f "$k8s_gomod" ]] || die "no go.mod for k8s.io/kubernetes@v$K8S_VERSION"
    go_directive="$(awk '$1 == "go" {print $2; exit}' "$k8s_gomod")"
    # Every module k8s.io/kubernetes replaces with a local ./staging path is published as v0.Y.Z.
    mapfile -t staging < <(awk '{sub(/^replace[ \t]+/, "")} $2 == "=>" && $3 ~ /^\.\/staging\// {print $1}' "$k8s_gomod")
    ((${#staging[@]} > 0)) || die "found no staging replaces in $k8s_gomod"
    log "building k8s v$K8S_VERSION (${#staging[@]} staging modules at $staging_version) and etcd v$ETCD_VERSION into $dest"

    work="$(mktemp -d "$root/build.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    mkdir "$work/bin"
    {
        printf 'module ray-gitops.invalid/controlplane\n\ngo %s\n\n' "$go_directive"
        printf 'require (\n\tk8s.io/kubernetes v%s\n\tgo.etcd.io/etcd/server/v3 v%s\n)\n\nreplace (\n' \
            "$K8S_VERSION" "$ETCD_VERSION"
        for m in "${staging[@]}"; do printf '\t%s => %s %s\n' "$m" "$m" "$staging_version"; done
        printf ')\n'
    } >"$work/go.mod"

    version_pkg_flags=""
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        version_pkg_flags+=" -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=${K8S_VERSION%%.*}"
        version_pkg_flags+=" -X $pkg.gitMinor=$(cut -d. -f2 <<<"$K8S_VERSION") -X $pkg.gitTreeState=clean"
    done
    build() {  # build <output name> <package> [extra ldflags]
        log "go build $2"
        (cd "$work" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w ${3:-}" -o "bin/$1" "$2")
    }
    build etcd go.etcd.io/etcd/server/v3
    build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$version_pkg_flags"
    build kubectl k8s.io/kubernetes/cmd/kubectl "$version_pkg_flags"

    selected_etcd="$(cd "$work" && GOFLAGS=-mod=mod go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)"
    [[ "$selected_etcd" == "v$ETCD_VERSION" ]] ||
        die "k8s.io/kubernetes@v$K8S_VERSION raised etcd to $selected_etcd; set ETCD_VERSION to match"
    [[ "$("$work/bin/kube-apiserver" --version)" == "Kubernetes v$K8S_VERSION" ]] || die "kube-apiserver --version is wrong"
    [[ "$("$work/bin/etcd" --version)" == *"etcd Version: $ETCD_VERSION"* ]] || die "etcd --version is wrong"

    rm -rf "$dest"
    mv "$work/bin" "$dest"
    log "built in $((SECONDS - start))s: $(du -sh "$dest" | cut -f1)"
fi

ensure_kuberay_crds
printf '%s\n' "$dest"
