# Shared by build.sh and build-operator.sh (sourced, not run): pinned versions, logging, the cache
# directory, and the generated module that builds commands of k8s.io/kubernetes.
# shellcheck shell=bash

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/ray-gitops/controlplane"

log() { printf 'controlplane: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# go mod download -json FIELD for one module@version (outside any module, so no go.mod is touched).
mod_field() {
    local field="$1" modver="$2" json
    json="$(cd / && GOFLAGS=-mod=mod go mod download -json "$modver")" || die "go mod download $modver failed: $json"
    sed -n "s/^\t\"$field\": \"\(.*\)\",\{0,1\}\$/\1/p" <<<"$json"
}

have_binaries() {  # have_binaries <dir> <name>...
    local dir="$1" bin
    for bin in "${@:2}"; do
        [[ -x "$dir/$bin" ]] || return 1
    done
}

# Take the build lock on fd 9: one builder at a time; a concurrent caller waits, then finds the result.
lock_cache() {
    command -v go >/dev/null || die "go is not installed (Go >= 1.26 is needed to build the test binaries)"
    mkdir -p "$cache_root"
    exec 9>"$cache_root/.lock"
    flock 9
}

# Write go.mod of a module in <dir> that requires k8s.io/kubernetes at K8S_VERSION plus any extra
# "module version" requirements. k8s.io/kubernetes replaces its staging modules with local
# ./staging paths; each is published as v0.Y.Z, which the wrapper maps them to.
write_k8s_wrapper() {  # write_k8s_wrapper <dir> ["module version"]...
    local dir="$1" k8s_gomod go_directive staging_version m req
    staging_version="v0.${K8S_VERSION#*.}"
    k8s_gomod="$(mod_field GoMod "k8s.io/kubernetes@v$K8S_VERSION")"
    [[ -f "$k8s_gomod" ]] || die "no go.mod for k8s.io/kubernetes@v$K8S_VERSION"
    go_directive="$(awk '$1 == "go" {print $2; exit}' "$k8s_gomod")"
    local -a staging
    mapfile -t staging < <(awk '{sub(/^replace[ \t]+/, "")} $2 == "=>" && $3 ~ /^\.\/staging\// {print $1}' "$k8s_gomod")
    ((${#staging[@]} > 0)) || die "found no staging replaces in $k8s_gomod"
    log "k8s.io/kubernetes v$K8S_VERSION: ${#staging[@]} staging modules at $staging_version"
    {
        printf 'module ray-gitops.invalid/controlplane\n\ngo %s\n\n' "$go_directive"
        printf 'require (\n\tk8s.io/kubernetes v%s\n' "$K8S_VERSION"
        for req in "${@:2}"; do printf '\t%s\n' "$req"; done
        printf ')\n\nreplace (\n'
        for m in "${staging[@]}"; do printf '\t%s => %s %s\n' "$m" "$m" "$staging_version"; done
        printf ')\n'
    } >"$dir/go.mod"
}

# -ldflags -X values that make a k8s.io/kubernetes command report K8S_VERSION.
k8s_version_ldflags() {
    local pkg flags=""
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=${K8S_VERSION%%.*}"
        flags+=" -X $pkg.gitMinor=$(cut -d. -f2 <<<"$K8S_VERSION") -X $pkg.gitTreeState=clean"
    done
    printf '%s' "$flags"
}

# Build one package of the module in <dir> into <dir>/bin/<name>, at the lowest CPU priority.
go_build() {  # go_build <dir> <name> <package> [extra ldflags]
    log "go build $3"
    (cd "$1" && CGO_ENABLED=0 GOFLAGS=-mod=mod nice -n 19 go build -trimpath -ldflags "-s -w ${4:-}" -o "bin/$2" "$3")
}

# Build a main package at a module version as its own main module (exactly the upstream go.sum),
# into <bin dir>, at the lowest CPU priority.
go_install() {  # go_install <bin dir> <package@version>
    log "go install $2"
    (cd / && CGO_ENABLED=0 GOBIN="$1" nice -n 19 go install -trimpath -ldflags "-s -w" "$2")
}

# The version of <module> linked into <binary> (go version -m), or nothing.
linked_version() {  # linked_version <binary> <module>
    go version -m "$1" | awk -v m="$2" '($1 == "mod" || $1 == "dep") && $2 == m {print $3; exit}'
}
