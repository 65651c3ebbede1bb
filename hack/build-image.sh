#!/usr/bin/env bash
# Build the operator image from ./Dockerfile without a Docker engine or Docker Hub:
# Debian bases from mmdebstrap (hack/image-base.sh) stand in for python:3.11-slim-bookworm
# through the Dockerfile's PYTHON_IMAGE / RUNTIME_IMAGE arguments, and buildah builds it
# daemonless (--isolation chroot). The result is an OCI image layout in the cache, keyed by
# the hash of every input, so a second run only hashes files.
#
#   hack/build-image.sh                      build, or find in the cache; print the layout dir
#   hack/build-image.sh --key                print the cache key and exit (no build)
#   hack/build-image.sh --push HOST/REPO:TAG also copy the image there (skopeo, digest kept;
#                                            plain HTTP for 127.0.0.1 / localhost / [::1])
#
# stdout is only the layout directory (tag "imageward" in its index.json); progress goes to
# stderr, buildah's output to a log beside the layout.
#
#   IMAGEWARD_CACHE           default ~/.cache/imageward; everything lives in $IMAGEWARD_CACHE/images:
#                               imageward-<key>/       the image (OCI layout), the newest 3 kept
#                               imageward-<key>.json   its digest, sizes and build time
#                               base-<key>/            the Debian bases (tars) and their package list
#                               buildah/               buildah's storage (layer cache for rebuilds)
#   IMAGEWARD_BUILDAH_DRIVER  overlay | vfs. Default overlay when the kernel mounts it (root):
#                             vfs copies the whole tree per layer (3.6 GB and 4 min for one
#                             build here, against a fraction of that with overlay).
#   IMAGEWARD_BUILDAH_MAX_MB  buildah's storage is wiped before a build when larger (8000).
#   IMAGEWARD_BUILD_CA        a CA bundle mounted over the build's /etc/ssl/certs/ca-certificates.crt
#                             during RUN steps only (never committed), so pip trusts what the
#                             host trusts (e.g. a TLS-intercepting proxy). Default: the host's
#                             /etc/ssl/certs/ca-certificates.crt when it exists; "" for none.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache=${IMAGEWARD_CACHE:-$HOME/.cache/imageward}
images=$cache/images
store=$images/buildah
keep_layouts=3

log() { printf '[build-image %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

push_refs=()
only_key=false
while [ $# -gt 0 ]; do
  case $1 in
    --push) push_refs+=("${2:?--push needs HOST/REPO:TAG}"); shift 2 ;;
    --key) only_key=true; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

# -- cache keys -------------------------------------------------------------------------
# The build context is what .dockerignore admits; keep this list in step with it
# (tests/unit/test_build_image.py checks that they agree).
context_files() {
  printf '%s\n' Dockerfile .dockerignore pyproject.toml LICENSE hack/trim-venv.py hack/constraints.txt \
    hack/static-helper/imageward-helper.c
  find operator -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' \
    | LC_ALL=C sort
}

sha() { sha256sum | cut -c1-20; }

base_key=$(
  cd "$root"
  {
    sha256sum hack/image-base.sh
    printf '%s\n' "$IMAGE_DEBIAN_SUITE" "$IMAGE_DEBIAN_MIRROR" "$IMAGE_DEBIAN_SECURITY_MIRROR"
  } | sha
)
key=$(
  cd "$root"
  {
    echo "base $base_key"
    sha256sum hack/build-image.sh
    context_files | tr '\n' '\0' | xargs -0 sha256sum
  } | sha
)
if $only_key; then echo "$key"; exit 0; fi

layout=$images/imageward-$key
base_dir=$images/base-$base_key
mkdir -p "$images"
exec 9>"$images/.lock"
flock 9 # one build at a time per cache (make image beside a test session)

# -- buildah ----------------------------------------------------------------------------
overlay_works() {
  local t; t=$(mktemp -d)
  mkdir "$t/l" "$t/u" "$t/w" "$t/m"
  if mount -t overlay overlay -o "lowerdir=$t/l,upperdir=$t/u,workdir=$t/w" "$t/m" 2>/dev/null; then
    umount "$t/m"; rm -rf "$t"; return 0
  fi
  rm -rf "$t"; return 1
}

buildah_cmd() {
  local driver=${IMAGEWARD_BUILDAH_DRIVER:-}
  if [ -z "$driver" ]; then
    if [ "$(id -u)" -eq 0 ] && overlay_works; then driver=overlay; else driver=vfs; fi
  fi
  B=(buildah --storage-driver "$driver" --root "$store/root" --runroot "$store/run")
  log "buildah $(buildah --version | awk '{print $3}'), storage driver $driver"
}

wipe_store() {
  "${B[@]}" rm --all >/dev/null 2>&1 || true
  "${B[@]}" rmi --all --force >/dev/null 2>&1 || true
  grep -o " $store/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount 2>/dev/null || true
  rm -rf "$store"
}

have_image() { "${B[@]}" inspect --type image "$1" >/dev/null 2>&1; }

ensure_bases() {
  if [ ! -f "$base_dir/runtime.tar" ] || [ ! -f "$base_dir/build.tar" ]; then
    log "building the Debian bases ($IMAGE_DEBIAN_SUITE, mmdebstrap; about a minute)"
    rm -rf "$base_dir.tmp"
    bash "$here/image-base.sh" "$base_dir.tmp"
    rm -rf "$base_dir"
    mv "$base_dir.tmp" "$base_dir"
    find "$images" -maxdepth 1 -name 'base-*' ! -name "base-$base_key" -exec rm -rf {} +
  fi
  local kind ref c
  for kind in runtime build; do
    ref=localhost/imageward-base/$kind:$base_key
    have_image "$ref" && continue
    log "importing the $kind base into buildah"
    c=$("${B[@]}" from scratch)
    "${B[@]}" config --created-by \
      "mmdebstrap --variant=minbase $IMAGE_DEBIAN_SUITE ($kind base, hack/image-base.sh)" "$c"
    "${B[@]}" add "$c" "$base_dir/$kind.tar" / >/dev/null
    "${B[@]}" config --os linux --arch amd64 \
      --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --env LANG=C.UTF-8 --cmd python3 "$c"
    "${B[@]}" commit --quiet --rm "$c" "$ref" >/dev/null
  done
}

build() {
  local started=$SECONDS
  mkdir -p "$store"
  buildah_cmd
  local size_mb; size_mb=$(du -sm "$store" 2>/dev/null | cut -f1)
  if [ "${size_mb:-0}" -gt "${IMAGEWARD_BUILDAH_MAX_MB:-8000}" ]; then
    log "buildah storage is ${size_mb} MB: wiping it (the next build starts from the bases)"
    wipe_store
    mkdir -p "$store"
  fi
  "${B[@]}" rm --all >/dev/null 2>&1 || true # working containers a killed build left
  ensure_bases

  local ca=${IMAGEWARD_BUILD_CA-/etc/ssl/certs/ca-certificates.crt} volumes=()
  if [ -n "$ca" ] && [ -f "$ca" ]; then
    volumes=(--volume "$ca:/etc/ssl/certs/ca-certificates.crt:ro")
  fi
  local tag=localhost/imageward:$key build_log=$images/imageward-$key.log
  log "building $tag from $root/Dockerfile (log: $build_log)"
  # Each log line gets a time stamp: where a slow build spends its time.
  "${B[@]}" bud --isolation chroot --layers --force-rm --pull=never --identity-label=false \
    --build-arg "PYTHON_IMAGE=localhost/imageward-base/build:$base_key" \
    --build-arg "RUNTIME_IMAGE=localhost/imageward-base/runtime:$base_key" \
    "${volumes[@]}" --tag "$tag" --file "$root/Dockerfile" "$root" 2>&1 \
    | while IFS= read -r line; do printf '%(%H:%M:%S)T %s\n' -1 "$line"; done >"$build_log"
  if [ "${PIPESTATUS[0]}" -ne 0 ]; then
    tail -30 "$build_log" >&2
    die "buildah bud failed (whole log: $build_log)"
  fi
  grep -o 'trim-venv: .*' "$build_log" >&2 || true

  rm -rf "$layout.tmp"
  log "writing the OCI layout"
  "${B[@]}" push --quiet --digestfile "$images/.digest" "$tag" "oci:$layout.tmp:imageward" >&2
  local seconds=$((SECONDS - started))
  python3 - "$layout.tmp" "$key" "$(cat "$images/.digest")" "$seconds" >"$layout.json" <<'EOF'
import json, pathlib, sys
layout, key, digest, seconds = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
blob = lambda d: layout / "blobs" / d.replace(":", "/")
manifest = json.loads(blob(digest).read_bytes())
layers = [layer["size"] for layer in manifest["layers"]]
print(json.dumps({"key": key, "digest": digest, "layers": layers, "compressed_size": sum(layers),
                  "build_seconds": seconds}, indent=1))
EOF
  rm -f "$images/.digest"
  rm -rf "$layout"
  mv "$layout.tmp" "$layout"
  log "built in ${seconds}s: $(python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
print(d["digest"][:19], round(d["compressed_size"] / 1e6, 1), "MB compressed in", len(d["layers"]), "layers")' "$layout.json")"

  # Keep the newest layouts; drop buildah's tags of the others (their layers stay cached
  # while younger images share them).
  local old
  for old in $(ls -1td "$images"/imageward-*/ 2>/dev/null | tail -n +$((keep_layouts + 1))); do
    old=${old%/}
    rm -rf "$old" "$old.json" "$old.log"
  done
  for old in $("${B[@]}" images --noheading --format '{{.Name}}:{{.Tag}}' 2>/dev/null \
      | grep '^localhost/imageward:' | grep -v ":$key\$"); do
    "${B[@]}" rmi "$old" >/dev/null 2>&1 || true
  done
}

if [ -f "$layout/index.json" ] && [ -f "$layout.json" ]; then
  log "cached: $layout"
else
  build
fi

for ref in "${push_refs[@]}"; do
  host=${ref%%/*}
  tls=(--dest-tls-verify=true)
  case $host in 127.*|localhost|localhost:*|'[::1]'*) tls=(--dest-tls-verify=false) ;; esac
  log "pushing to $ref"
  skopeo copy --quiet --preserve-digests "${tls[@]}" "oci:$layout:imageward" "docker://$ref" >&2
done
echo "$layout"
