#!/usr/bin/env bash
# Build the peers imageward is measured against (bench/peers_bench.py) from the Go module
# proxy into the tool cache, one file per version, as hack/build-tools.sh does:
#   kyverno-<v>            Kyverno's admission controller (cmd/kyverno)
#   kubectl-kyverno-<v>    Kyverno's CLI (cmd/cli/kubectl-kyverno)
#   policy-webhook-<v>     sigstore policy-controller's webhook (cmd/webhook)
#   policy-tester-<v>      sigstore policy-controller's tester (cmd/tester)
# and, in peers/<name>-<v>, the manifests the benchmark installs them with (Kyverno's CRDs
# and rendered Helm chart, policy-controller's config/), taken from the same modules.
# Not part of `make test`: a cold build takes about 10 minutes on 2 cores, peaks at about
# 3 GiB of memory and adds about 6 GB to the Go module and build caches.
#   IMAGEWARD_CACHE  (default ~/.cache/imageward)  where binaries and Go caches live
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache=${IMAGEWARD_CACHE:-$HOME/.cache/imageward}
bin=$cache/bin
mkdir -p "$bin" "$cache/src" "$cache/peers"
export GOMODCACHE=${GOMODCACHE:-$cache/gomod}
export GOCACHE=${GOCACHE:-$cache/gobuild}
export GOFLAGS=-buildvcs=false
export CGO_ENABLED=0

log() { printf '[build-peers %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# have NAME VERSION: true when bin/NAME-VERSION exists; (re)links bin/NAME to it.
have() {
  if [ -x "$bin/$1-$2" ]; then ln -sfn "$1-$2" "$bin/$1"; return 0; fi
  return 1
}

# wrapper MODDIR MODULE GO REQUIRE PACKAGES... : a module that requires REQUIRE and imports
# PACKAGES (a build-tagged tools.go), with the replace lines read from stdin.
wrapper() {
  local dir=$1 module=$2 gover=$3 require=$4; shift 4
  mkdir -p "$dir"
  {
    printf 'module %s\n\ngo %s\n\nrequire %s\n\n' "$module" "$gover" "$require"
    cat
  } > "$dir/go.mod"
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    for p in "$@"; do printf '\t_ "%s"\n' "$p"; done
    printf ')\n'
  } > "$dir/tools.go"
}

# module_dir WRAPPER MODULE: where the Go module cache holds MODULE's source.
module_dir() { (cd "$1" && go list -m -f '{{.Dir}}' "$2"); }

# kit_done NAME VERSION: true when peers/NAME-VERSION is complete; (re)links peers/NAME.
kit_done() {
  if [ -f "$cache/peers/$1-$2/version" ]; then ln -sfn "$1-$2" "$cache/peers/$1"; return 0; fi
  return 1
}

timed_build() { # DIR OUT LDFLAGS PACKAGE
  local dir=$1 out=$2 ldflags=$3 pkg=$4 start=$SECONDS
  (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$out.tmp" "$pkg")
  mv "$out.tmp" "$out"
  log "built $(basename "$out") in $((SECONDS - start)) s ($(du -m "$out" | cut -f1) MB)"
}

build_kyverno() {
  local v=$KYVERNO_VERSION
  if have kyverno "$v" && have kubectl-kyverno "$v"; then log "kyverno $v cached"; return; fi
  local mod=$cache/src/kyverno-$v m=github.com/kyverno/kyverno
  # Kyverno's go.mod has one replace, which a requiring module must repeat.
  wrapper "$mod" imageward.local/kyverno-tools 1.26 "$m v$v" \
    "$m/cmd/kyverno" "$m/cmd/cli/kubectl-kyverno" <<'EOF'
replace k8s.io/pod-security-admission => github.com/kyverno/pod-security-admission v0.0.0-20251031094455-46f20778634f
EOF
  local start=$SECONDS
  log "resolving kyverno $v modules"
  (cd "$mod" && go mod tidy >/dev/null)
  log "resolved in $((SECONDS - start)) s"
  local ldflags="-s -w -X $m/pkg/version.BuildVersion=v$v"
  have kyverno "$v" || { log "building kyverno $v (minutes, ~3 GiB)"; timed_build "$mod" "$bin/kyverno-$v" "$ldflags" "$m/cmd/kyverno"; have kyverno "$v"; }
  have kubectl-kyverno "$v" || { log "building kubectl-kyverno $v"; timed_build "$mod" "$bin/kubectl-kyverno-$v" "$ldflags" "$m/cmd/cli/kubectl-kyverno"; have kubectl-kyverno "$v"; }
}

kit_kyverno() {
  # What the benchmark installs of Kyverno: its CRDs and what its Helm chart renders
  # (ConfigMaps, the admission controller's arguments and environment).
  local v=$KYVERNO_VERSION
  kit_done kyverno "$v" && { log "kyverno $v kit cached"; return; }
  local src; src=$(module_dir "$cache/src/kyverno-$v" github.com/kyverno/kyverno)
  local kit=$cache/peers/kyverno-$v tmp; tmp=$(mktemp -d)
  rm -rf "$kit" && mkdir -p "$kit/crds"
  cp "$src"/config/crds/*/*.yaml "$kit/crds/"
  cp -r "$src/charts/kyverno" "$tmp/chart" && chmod -R u+w "$tmp/chart"
  # The chart's remote dependencies (more CRDs, the reports server) are not needed and
  # not reachable offline: drop the dependency entries that name a repository.
  awk '
    function flush() { if (block != "" && block !~ /repository:/) printf "%s", block; block = "" }
    /^dependencies:/ { indeps = 1; print; next }
    indeps && /^  - / { flush(); block = $0 "\n"; next }
    indeps && /^    / { block = block $0 "\n"; next }
    indeps { flush(); indeps = 0 }
    { print }
    END { flush() }
  ' "$tmp/chart/Chart.yaml" > "$tmp/Chart.yaml" && mv "$tmp/Chart.yaml" "$tmp/chart/Chart.yaml"
  rm -f "$tmp/chart/Chart.lock"
  "$bin/helm" template kyverno "$tmp/chart" --namespace kyverno \
    --kube-version "$KUBERNETES_VERSION" > "$kit/chart.yaml"
  rm -rf "$tmp"
  echo "$v" > "$kit/version"
  kit_done kyverno "$v"
  log "kyverno $v kit in $kit"
}

build_policy_controller() {
  local v=$POLICY_CONTROLLER_VERSION
  if have policy-webhook "$v" && have policy-tester "$v"; then log "policy-controller $v cached"; return; fi
  local mod=$cache/src/policy-controller-$v m=github.com/sigstore/policy-controller
  local ggcr=github.com/google/go-containerregistry/pkg/authn
  # policy-controller's own replaces, plus two pseudo-versions of go-containerregistry's
  # k8schain and kubernetes modules: the proxy refuses (403) the ones it asks for.
  wrapper "$mod" imageward.local/policy-controller-tools 1.25 "$m v$v" \
    "$m/cmd/webhook" "$m/cmd/tester" <<EOF
replace github.com/golang/glog => github.com/jdolitsky/glog v0.0.0-20220729172235-78744e90d087

replace k8s.io/code-generator => k8s.io/code-generator v0.29.4

replace $ggcr/k8schain => $ggcr/k8schain v0.0.0-20260205022027-93aa2732266a

replace $ggcr/kubernetes => $ggcr/kubernetes v0.0.0-20260224031529-85f2bf5f7303
EOF
  local start=$SECONDS
  log "resolving policy-controller $v modules"
  (cd "$mod" && go mod tidy >/dev/null)
  log "resolved in $((SECONDS - start)) s"
  local ldflags="-s -w -buildid= -X sigs.k8s.io/release-utils/version.gitVersion=v$v"
  have policy-webhook "$v" || { log "building policy-webhook $v"; timed_build "$mod" "$bin/policy-webhook-$v" "$ldflags" "$m/cmd/webhook"; have policy-webhook "$v"; }
  have policy-tester "$v" || { log "building policy-tester $v"; timed_build "$mod" "$bin/policy-tester-$v" "$ldflags" "$m/cmd/tester"; have policy-tester "$v"; }
}

kit_policy_controller() {
  # What the benchmark installs of policy-controller: its config/ (CRDs, ConfigMaps,
  # webhook configurations, the certificate Secret).
  local v=$POLICY_CONTROLLER_VERSION
  kit_done policy-controller "$v" && { log "policy-controller $v kit cached"; return; }
  local src; src=$(module_dir "$cache/src/policy-controller-$v" github.com/sigstore/policy-controller)
  local kit=$cache/peers/policy-controller-$v
  rm -rf "$kit" && mkdir -p "$kit/config"
  cp "$src"/config/*.yaml "$kit/config/"
  rm -f "$kit/config/kustomization.yaml"
  chmod -R u+w "$kit"
  echo "$v" > "$kit/version"
  kit_done policy-controller "$v"
  log "policy-controller $v kit in $kit"
}

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(kyverno policy-controller)
for t in "${targets[@]}"; do
  case $t in
    kyverno) build_kyverno; kit_kyverno ;;
    policy-controller) build_policy_controller; kit_policy_controller ;;
    *) echo "unknown peer: $t" >&2; exit 2 ;;
  esac
done
log "peers ready in $bin"
