#!/usr/bin/env bash
# Build, from Go modules, what runs the real KubeRay operator against the test control plane:
# kube-controller-manager and kube-scheduler (k8s.io/kubernetes, the API server's version), kwok
# (fake nodes whose Pods become Running and Ready) and the KubeRay operator (ray-operator).
#
# Prints the directory holding the four binaries on the last stdout line; all progress goes to
# stderr. Idempotent: does nothing when the versioned cache directory is already complete.
# The kwok Stage definitions are read at run time from the sigs.k8s.io/kwok module in the module cache.
#
# Versions: tests/controlplane/versions.env. Cache: ${XDG_CACHE_HOME:-~/.cache}/ray-gitops/controlplane.
set -euo pipefail

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

binaries=(kube-controller-manager kube-scheduler kwok ray-operator)

check_version() {  # check_version <binary> <module> <version>
    local linked
    linked="$(linked_version "$1" "$2")"
    [[ "$linked" == "$3" ]] || die "$(basename "$1") links $2 ${linked:-(absent)}, expected $3"
}

build_operator_set() {  # build_operator_set <dest>
    local dest="$1" start=$SECONDS work version_flags bin
    log "building ${binaries[*]} (k8s v$K8S_VERSION, KubeRay v$KUBERAY_VERSION, kwok v$KWOK_VERSION) into $dest"
    work="$(mktemp -d "$cache_root/build.XXXXXX")"
    trap "rm -rf '$work'" EXIT
    mkdir "$work/bin"
    write_k8s_wrapper "$work"
    version_flags="$(k8s_version_ldflags)"
    go_build "$work" kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$version_flags"
    go_build "$work" kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler "$version_flags"
    go_install "$work/bin" "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION"
    go_install "$work/bin" "github.com/ray-project/kuberay/ray-operator@v$KUBERAY_VERSION"

    for bin in kube-controller-manager kube-scheduler; do
        [[ "$("$work/bin/$bin" --version)" == "Kubernetes v$K8S_VERSION" ]] || die "$bin --version is wrong"
    done
    check_version "$work/bin/kwok" sigs.k8s.io/kwok "v$KWOK_VERSION"
    check_version "$work/bin/ray-operator" github.com/ray-project/kuberay/ray-operator "v$KUBERAY_VERSION"

    rm -rf "$dest"
    mv "$work/bin" "$dest"
    rm -rf "$work"
    trap - EXIT
    log "built in $((SECONDS - start))s: $(du -sh "$dest" | cut -f1)"
    for bin in "${binaries[@]}"; do log "  $(du -h "$dest/$bin" | cut -f1) $bin"; done
}

lock_cache
dest="$cache_root/operator-k8s-$K8S_VERSION-kuberay-$KUBERAY_VERSION-kwok-$KWOK_VERSION"
have_binaries "$dest" "${binaries[@]}" || build_operator_set "$dest"
log "operator binaries: $dest"
printf '%s\n' "$dest"
