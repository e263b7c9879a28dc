#!/usr/bin/env bash
# Build the real Kubernetes binaries that tests/k8s runs loraplane against: kube-apiserver and
# kubectl, the etcd that Kubernetes release supports, and helm. Built from their Go modules with
# `go build` (needs Go and its module proxy), cached outside the repository, safe to run again.
#
#   scripts/k8s-binaries.sh          build what is missing, print the versions, last line the bin dir
#   scripts/k8s-binaries.sh --dir    print the bin dir only (built or not); the tests find it this way
#
# Environment: LORAPLANE_CACHE_DIR (default ~/.cache/loraplane), K8S_BUILD_JOBS (go build -p,
# default the number of CPUs), K8S_BUILD_NICE (default 10).
#
# Why a build module of our own: `go install k8s.io/kubernetes/cmd/kube-apiserver@vX` refuses, as
# the kubernetes module replaces its staging modules (k8s.io/api, k8s.io/client-go, ...) with local
# paths, and requires them at v0.0.0, which does not exist. Our module requires k8s.io/kubernetes
# and points each staging module at its published v0.<minor>.<patch> tag instead; the list is read
# from the `=> ./staging/src/` lines of the kubernetes go.mod itself. etcd's server module has local
# replace lines of the same kind; requiring it from our own module resolves its siblings by their
# published tags. The version strings are set with -ldflags as the upstream release builds set them,
# so `/version` reports the real version (Helm's kubeVersion checks read it).
#
# Cold build, 2 busy cores: see docs/install.md ("Kubernetes versions the chart is tested against").
set -euo pipefail

# The versions, in one place. Kubernetes 1.37 supports etcd 3.6 and later.
KUBERNETES_VERSION=v1.37.2
ETCD_VERSION=v3.6.16
HELM_VERSION=v4.3.2

CACHE=${LORAPLANE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/loraplane}/k8s
BIN=$CACHE/bin-kubernetes-$KUBERNETES_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION

if [ "${1:-}" = --dir ]; then
    echo "$BIN"
    exit 0
elif [ $# -gt 0 ]; then
    echo "usage: $0 [--dir]" >&2
    exit 2
fi

die() { echo "k8s-binaries: $*" >&2; exit 1; }
command -v go >/dev/null || die "Go is not installed; install Go 1.26 or later (https://go.dev/dl) and run again"

# A module and build cache of our own, so the whole cost sits in one directory that can be cached.
export GOMODCACHE=$CACHE/gomod GOCACHE=$CACHE/gobuild GOFLAGS=-modcacherw GOTOOLCHAIN=local
export CGO_ENABLED=0 GOWORK=off
JOBS=${K8S_BUILD_JOBS:-$(nproc)}
NICE=${K8S_BUILD_NICE:-10}
mkdir -p "$BIN" "$GOMODCACHE" "$GOCACHE"

step() { printf '== %s (%ss)\n' "$*" "$SECONDS" >&2; }

# gobuild DIR OUT PKG LDFLAGS: build PKG inside the build module DIR into $BIN/OUT, via a temporary
# name so an interrupted build never leaves a half-written binary behind.
gobuild() {
    local dir=$1 out=$2 pkg=$3 ldflags=$4
    (cd "$dir" && nice -n "$NICE" go build -p "$JOBS" -trimpath -ldflags "-s -w $ldflags" \
        -o "$BIN/.$out.tmp" "$pkg")
    mv -f "$BIN/.$out.tmp" "$BIN/$out"
}

# goget DIR PKG...: resolve PKG in the build module DIR, filling its go.sum; quiet unless it fails.
goget() {
    local dir=$1 log
    shift
    log=$(cd "$dir" && go get "$@" 2>&1) || { echo "$log" >&2; die "go get $* failed (in $dir)"; }
}

# module DIR NAME REQUIRE...: (re)write a build module's go.mod; go.sum is filled by `go get`.
module() {
    local dir=$1 name=$2
    shift 2
    mkdir -p "$dir"
    {
        echo "module loraplane.local/$name"
        echo
        echo "go 1.26"
        for req in "$@"; do echo "require $req"; done
    } >"$dir/go.mod"
    rm -f "$dir/go.sum"
}

build_kubernetes() {
    [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kubectl" ] && return
    local dir=$CACHE/build/kubernetes-$KUBERNETES_VERSION
    local staging=v0.${KUBERNETES_VERSION#v1.}
    step "kubernetes $KUBERNETES_VERSION: resolving staging modules (as $staging)"
    module "$dir" kubernetes "k8s.io/kubernetes $KUBERNETES_VERSION"
    local gomod
    gomod=$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" \
        | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')
    [ -f "$gomod" ] || die "could not download the go.mod of k8s.io/kubernetes@$KUBERNETES_VERSION"
    local mods
    mods=$(sed -n 's|^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/.*|\1|p' "$gomod")
    [ -n "$mods" ] || die "no staging replace lines found in $gomod"
    for m in $mods; do echo "replace $m => $m $staging" >>"$dir/go.mod"; done
    step "kubernetes $KUBERNETES_VERSION: downloading modules ($(wc -w <<<"$mods") staging modules replaced)"
    goget "$dir" "k8s.io/kubernetes/cmd/kube-apiserver@$KUBERNETES_VERSION" \
        "k8s.io/kubernetes/cmd/kubectl@$KUBERNETES_VERSION"
    local minor=${KUBERNETES_VERSION#v1.}
    minor=${minor%%.*}
    local ld="" p
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ld+=" -X $p.gitVersion=$KUBERNETES_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
        ld+=" -X $p.gitTreeState=clean"
    done
    step "kubernetes $KUBERNETES_VERSION: go build kube-apiserver"
    gobuild "$dir" kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$ld"
    step "kubernetes $KUBERNETES_VERSION: go build kubectl"
    gobuild "$dir" kubectl k8s.io/kubernetes/cmd/kubectl "$ld"
}

build_etcd() {
    [ -x "$BIN/etcd" ] && return
    local dir=$CACHE/build/etcd-$ETCD_VERSION
    step "etcd $ETCD_VERSION: downloading modules"
    module "$dir" etcd "go.etcd.io/etcd/server/v3 $ETCD_VERSION"
    goget "$dir" "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    step "etcd $ETCD_VERSION: go build etcd"
    gobuild "$dir" etcd go.etcd.io/etcd/server/v3 ""
}

build_helm() {
    [ -x "$BIN/helm" ] && return
    local dir=$CACHE/build/helm-$HELM_VERSION
    step "helm $HELM_VERSION: downloading modules"
    module "$dir" helm "helm.sh/helm/v4 $HELM_VERSION"
    goget "$dir" "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
    step "helm $HELM_VERSION: go build helm"
    gobuild "$dir" helm helm.sh/helm/v4/cmd/helm \
        "-X helm.sh/helm/v4/internal/version.version=$HELM_VERSION -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
}

build_etcd
build_helm
build_kubernetes

echo "kube-apiserver $("$BIN/kube-apiserver" --version | awk '{print $2}')"
echo "kubectl $("$BIN/kubectl" version --client -o json | sed -n 's/.*"gitVersion": "\([^"]*\)".*/\1/p' | head -1)"
echo "etcd $("$BIN/etcd" --version | sed -n 's/^etcd Version: //p')"
echo "helm $("$BIN/helm" version --template '{{.Version}}')"
echo "$BIN"
