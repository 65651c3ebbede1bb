#!/usr/bin/env bash
# Build the control-plane and test tools from the Go module proxy into a cache outside
# the checkout, one directory per version, so a second run costs nothing.
#   IMAGEWARD_CACHE  (default ~/.cache/imageward)  where binaries and Go caches live
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache=${IMAGEWARD_CACHE:-$HOME/.cache/imageward}
bin=$cache/bin
mkdir -p "$bin" "$cache/src"
export GOMODCACHE=${GOMODCACHE:-$cache/gomod}
export GOCACHE=${GOCACHE:-$cache/gobuild}
export GOFLAGS=-buildvcs=false
export CGO_ENABLED=0

log() { printf '[build-tools %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# have NAME VERSION: true when bin/NAME-VERSION exists; (re)links bin/NAME to it.
have() {
  if [ -x "$bin/$1-$2" ]; then ln -sfn "$1-$2" "$bin/$1"; return 0; fi
  return 1
}

go_install() { # NAME VERSION PACKAGE@VERSION
  local name=$1 version=$2 pkg=$3
  have "$name" "$version" && { log "$name $version cached"; return; }
  log "building $name $version ($pkg)"
  local tmp; tmp=$(mktemp -d)
  GOBIN=$tmp go install "$pkg"
  mv "$tmp/$(basename "${pkg%@*}")" "$bin/$name-$version"
  rm -rf "$tmp"
  have "$name" "$version"
}

build_kubernetes() {
  local v=$KUBERNETES_VERSION minor=${KUBERNETES_VERSION#*.}; minor=${minor%%.*}
  local names=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
  local missing=()
  for n in "${names[@]}"; do have "$n" "$v" || missing+=("$n"); done
  [ ${#missing[@]} -eq 0 ] && { log "kubernetes $v cached"; return; }
  # k8s.io/kubernetes replaces its staging modules with local paths, so `go install`
  # refuses it; a wrapper module that pins each staging module to v0.<minor>.<patch> builds.
  local mod=$cache/src/kubernetes-$v
  mkdir -p "$mod"
  local staging=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go
    cloud-provider cluster-bootstrap code-generator component-base component-helpers
    controller-manager cri-api cri-client csi-translation-lib dynamic-resource-allocation
    endpointslice externaljwt kms kube-aggregator kube-controller-manager kube-proxy
    kube-scheduler kubectl kubelet metrics mount-utils pod-security-admission
    sample-apiserver sample-cli-plugin sample-controller)
  {
    echo "module imageward.local/kubernetes-tools"
    echo
    echo "go 1.24"
    echo
    echo "require k8s.io/kubernetes v$v"
    echo
    for s in "${staging[@]}"; do echo "replace k8s.io/$s => k8s.io/$s v0.${v#*.}"; done
  } > "$mod/go.mod"
  {
    echo "//go:build tools"
    echo
    echo "package tools"
    echo
    echo "import ("
    for n in "${names[@]}"; do echo "	_ \"k8s.io/kubernetes/cmd/$n\""; done
    echo ")"
  } > "$mod/tools.go"
  log "resolving kubernetes $v modules"
  (cd "$mod" && go mod tidy >/dev/null)
  local pkgv=k8s.io/component-base/version clientv=k8s.io/client-go/pkg/version
  local ldflags="-s -w"
  for p in $pkgv $clientv; do
    ldflags+=" -X $p.gitVersion=v$v -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  for n in "${missing[@]}"; do
    log "building $n $v (a cold build takes minutes)"
    (cd "$mod" && go build -trimpath -ldflags "$ldflags" -o "$bin/$n-$v" "k8s.io/kubernetes/cmd/$n")
    have "$n" "$v"
  done
}

build_pause() {
  # The real node's sandbox image (nothing can be pulled from registry.k8s.io here).
  local src=$here/pause/imageward-pause.c
  local v; v=$(sha256sum "$src" | cut -c1-12)
  have imageward-pause "$v" && { log "imageward-pause $v cached"; return; }
  log "building imageward-pause $v (static, gcc)"
  cc -static -Os -s -o "$bin/imageward-pause-$v" "$src"
  have imageward-pause "$v"
}

build_etcd() {
  local v=$ETCD_VERSION
  have etcd "$v" && { log "etcd $v cached"; return; }
  local mod=$cache/src/etcd-$v
  mkdir -p "$mod"
  printf 'module imageward.local/etcd-tools\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 v%s\n' "$v" > "$mod/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > "$mod/tools.go"
  log "building etcd $v"
  (cd "$mod" && go mod tidy >/dev/null && go build -trimpath -ldflags "-s -w" -o "$bin/etcd-$v" go.etcd.io/etcd/server/v3)
  have etcd "$v"
}

build_helper() {
  # The static helper PrePull copies into pre-pull pods (and tests put into scratch images).
  local src=$here/static-helper/imageward-helper.c
  local v; v=$(sha256sum "$src" | cut -c1-12)
  have imageward-helper "$v" && { log "imageward-helper $v cached"; return; }
  log "building imageward-helper $v (static, gcc)"
  cc -static -Os -s -o "$bin/imageward-helper-$v" "$src"
  have imageward-helper "$v"
}

build_referrers_registry() {
  # go-containerregistry's registry with the OCI referrers API on (distribution has none).
  local v=$CRANE_VERSION src=$here/referrers-registry
  local key; key=$v-$(sha256sum "$src/main.go" | cut -c1-8)
  have referrers-registry "$key" && { log "referrers-registry $key cached"; return; }
  local mod=$cache/src/referrers-registry-$key
  mkdir -p "$mod"
  cp "$src/main.go" "$mod/main.go"
  printf 'module imageward.local/referrers-registry\n\ngo 1.24\n\nrequire github.com/google/go-containerregistry v%s\n' "$v" > "$mod/go.mod"
  log "building referrers-registry $key"
  (cd "$mod" && go mod tidy >/dev/null && go build -trimpath -ldflags "-s -w" -o "$bin/referrers-registry-$key" .)
  have referrers-registry "$key"
}

build_containerd2() {
  # containerd 2.x (a CRI with image volumes, KEP-4639) beside Debian's 1.6. Its go.mod has
  # exclude directives, so `go install pkg@v` refuses it; a wrapper module repeating them
  # builds. No cgo: the btrfs, devmapper and zfs snapshotters are left out (overlayfs).
  local v=$CONTAINERD2_VERSION
  have containerd2 "$v" && { log "containerd2 $v cached"; return; }
  local mod=$cache/src/containerd-$v pkg=github.com/containerd/containerd/v2
  mkdir -p "$mod"
  {
    printf 'module imageward.local/containerd-tools\n\ngo 1.24\n\nrequire %s v%s\n\n' "$pkg" "$v"
    printf 'exclude (\n'
    printf '\tgithub.com/davecgh/go-spew v1.1.2-0.20180830191138-d8f796af33cc\n'
    printf '\tgithub.com/pmezard/go-difflib v1.0.1-0.20181226105442-5d4384ee4fb2\n'
    printf ')\n'
  } > "$mod/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s/cmd/containerd"\n' "$pkg" > "$mod/tools.go"
  log "building containerd2 $v (a cold build takes minutes)"
  (cd "$mod" && go mod tidy >/dev/null && go build -trimpath -tags no_btrfs,no_devmapper,no_zfs \
    -ldflags "-s -w -X $pkg/version.Version=v$v" -o "$bin/containerd2-$v" "$pkg/cmd/containerd")
  have containerd2 "$v"
}

build_notation() {
  # The Notary Project CLI, for tests that sign with it and compare `notation verify`.
  # `go install …@v` asks the proxy for the module's version list (deprecation check),
  # which it refuses (403) for this module; a wrapper module that requires it builds.
  local v=$NOTATION_VERSION
  have notation "$v" && { log "notation $v cached"; return; }
  local mod=$cache/src/notation-$v
  mkdir -p "$mod"
  printf 'module imageward.local/notation-tools\n\ngo 1.24\n\nrequire github.com/notaryproject/notation v%s\n' "$v" > "$mod/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "github.com/notaryproject/notation/cmd/notation"\n' > "$mod/tools.go"
  log "building notation $v"
  (cd "$mod" && go mod tidy >/dev/null && go build -trimpath -ldflags "-s -w -X github.com/notaryproject/notation/internal/version.BuildMetadata=" -o "$bin/notation-$v" github.com/notaryproject/notation/cmd/notation)
  have notation "$v"
}

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(helper pause etcd kubernetes kwok cosign helm crane referrers-registry notation containerd2)
for t in "${targets[@]}"; do
  case $t in
    helper) build_helper ;;
    pause) build_pause ;;
    etcd) build_etcd ;;
    kubernetes) build_kubernetes ;;
    kwok) go_install kwok "$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION" ;;
    cosign) go_install cosign "$COSIGN_VERSION" "github.com/sigstore/cosign/v3/cmd/cosign@v$COSIGN_VERSION" ;;
    helm) go_install helm "$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION" ;;
    referrers-registry) build_referrers_registry ;;
    containerd2) build_containerd2 ;;
    crane) go_install crane "$CRANE_VERSION" "github.com/google/go-containerregistry/cmd/crane@v$CRANE_VERSION" ;;
    notation) build_notation ;;
    bombardier) go_install bombardier "$BOMBARDIER_VERSION" "github.com/codesenberg/bombardier@v$BOMBARDIER_VERSION" ;;
    *) echo "unknown tool: $t" >&2; exit 2 ;;
  esac
done
log "tools ready in $bin"
