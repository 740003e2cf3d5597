#!/usr/bin/env bash
# Build kube-apiserver, etcd and kubectl from Go modules (envtest-style test control plane), then the
# operator-level binaries (build-operator.sh: kube-controller-manager, kube-scheduler, kwok and the
# KubeRay operator).
#
# Prints the control-plane assets directory (holding the three binaries) on the last stdout line;
# all progress goes to stderr. Idempotent: does nothing when the versioned cache directories are
# already complete. If KUBEBUILDER_ASSETS names a directory with kube-apiserver and etcd, that
# directory is used and no control plane is built. Also makes sure the KubeRay ray-operator module
# (CRDs) is in the module cache.
#
# Versions: tests/controlplane/versions.env. Cache: ${XDG_CACHE_HOME:-~/.cache}/ray-gitops/controlplane.
set -euo pipefail

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ensure_kuberay_crds() {
    local dir
    dir="$(mod_field Dir "github.com/ray-project/kuberay/ray-operator@v$KUBERAY_VERSION")"
    [[ -f "$dir/config/crd/bases/ray.io_rayclusters.yaml" ]] || die "no KubeRay CRDs under $dir"
    log "KubeRay CRDs: $dir/config/crd/bases"
}

build_control_plane() {  # build_control_plane <dest>
    local dest="$1" start=$SECONDS work selected_etcd version_flags
    log "building k8s v$K8S_VERSION and etcd v$ETCD_VERSION into $dest"
    work="$(mktemp -d "$cache_root/build.XXXXXX")"
    trap "rm -rf '$work'" EXIT
    mkdir "$work/bin"
    write_k8s_wrapper "$work" "go.etcd.io/etcd/server/v3 v$ETCD_VERSION"
    version_flags="$(k8s_version_ldflags)"
    go_build "$work" etcd go.etcd.io/etcd/server/v3
    go_build "$work" kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$version_flags"
    go_build "$work" kubectl k8s.io/kubernetes/cmd/kubectl "$version_flags"

    selected_etcd="$(cd "$work" && GOFLAGS=-mod=mod go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)"
    [[ "$selected_etcd" == "v$ETCD_VERSION" ]] ||
        die "k8s.io/kubernetes@v$K8S_VERSION raised etcd to $selected_etcd; set ETCD_VERSION to match"
    [[ "$("$work/bin/kube-apiserver" --version)" == "Kubernetes v$K8S_VERSION" ]] || die "kube-apiserver --version is wrong"
    [[ "$("$work/bin/etcd" --version)" == *"etcd Version: $ETCD_VERSION"* ]] || die "etcd --version is wrong"

    rm -rf "$dest"
    mv "$work/bin" "$dest"
    rm -rf "$work"
    trap - EXIT
    log "built in $((SECONDS - start))s: $(du -sh "$dest" | cut -f1)"
}

if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
    have_binaries "$KUBEBUILDER_ASSETS" kube-apiserver etcd ||
        die "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks kube-apiserver or etcd"
    assets="$KUBEBUILDER_ASSETS"
else
    lock_cache
    assets="$cache_root/k8s-$K8S_VERSION-etcd-$ETCD_VERSION"
    have_binaries "$assets" kube-apiserver etcd kubectl || build_control_plane "$assets"
    flock -u 9  # build-operator.sh takes the lock itself
fi

ensure_kuberay_crds
bash "$here/build-operator.sh" >&2
printf '%s\n' "$assets"
