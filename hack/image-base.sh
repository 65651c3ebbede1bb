#!/usr/bin/env bash
# The Debian bases that stand in for python:3.11-slim-bookworm (Docker Hub is unreachable
# on the project machines; Debian's archive is not). hack/build-image.sh runs this and
# caches the result by the hash of this file and the variables below.
#
#   hack/image-base.sh OUTDIR    -> OUTDIR/runtime.tar  the final stage's base
#                                   OUTDIR/build.tar    the build stages' base
#
# runtime: mmdebstrap --variant=minbase + python3 (3.11), ca-certificates, python-is-python3.
# build:   the same + python3-pip and python3-venv (the Dockerfile's build stages use pip;
#          the final image must not carry it).
# Both: merged /usr set up by mmdebstrap's hook (no usrmerge, so no perl), no /dev nodes, no
# docs (copyright files stay), man pages, info, locales, lintian data, apt lists or caches,
# logs or *-old backups. The runtime base has no iconv modules either (see runtime_trim).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
out=${1:?usage: image-base.sh OUTDIR}
mkdir -p "$out"

suite=$IMAGE_DEBIAN_SUITE
mirror=$IMAGE_DEBIAN_MIRROR
sources=(
  "deb $mirror $suite main"
  "deb $mirror $suite-updates main"
  "deb $IMAGE_DEBIAN_SECURITY_MIRROR $suite-security main"
)
trim=(
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-include=/usr/share/locale/locale.alias'
  --dpkgopt='path-exclude=/usr/share/lintian/*'
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*'
  --customize-hook='rm -f "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old'
  --skip=output/dev
)
runtime_packages=python3,ca-certificates,python-is-python3
build_packages=$runtime_packages,python3-pip,python3-venv

# The runtime base also drops glibc's iconv modules (8 MB, 2.9 MB compressed): Python's
# codecs are its own, and UTF-8, ASCII and Latin-1 are built into libc.
runtime_trim=(--dpkgopt='path-exclude=/usr/lib/x86_64-linux-gnu/gconv/*')

strap() { # NAME PACKAGES [MMDEBSTRAP OPTIONS...]
  local name=$1 packages=$2; shift 2
  mmdebstrap --variant=minbase --format=tar --include="$packages" \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr "${trim[@]}" "$@" \
    "$suite" "$out/$name.tar.tmp" "${sources[@]}" >"$out/$name.log" 2>&1 \
    || { tail -20 "$out/$name.log" >&2; return 1; }
  mv "$out/$name.tar.tmp" "$out/$name.tar"
}

# Both at once: they are network- and dpkg-bound, and fetching side by side keeps the
# window in which the archive could change between them short.
strap runtime "$runtime_packages" "${runtime_trim[@]}" & runtime_pid=$!
strap build "$build_packages" & build_pid=$!
status=0
wait "$runtime_pid" || status=1
wait "$build_pid" || status=1
[ "$status" -eq 0 ] || { echo "image-base: mmdebstrap failed (logs in $out)" >&2; exit 1; }

# The build stages make the virtualenv the final stage runs: one Python, same versions.
versions() { tar -xOf "$1" ./var/lib/dpkg/status | awk '/^Package:/{p=$2} /^Version:/{print p, $2}' | sort; }
mismatch=$(comm -23 <(versions "$out/runtime.tar") <(versions "$out/build.tar"))
if [ -n "$mismatch" ]; then
  echo "image-base: the archive changed between the two bases; run again. Differs:" >&2
  echo "$mismatch" >&2
  exit 1
fi
versions "$out/runtime.tar" >"$out/packages.txt"
grep '^python3.11 ' "$out/packages.txt" >&2
