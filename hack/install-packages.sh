#!/usr/bin/env bash
# Install the Debian packages the tests and `imageward dev` run (registry, containerd,
# Prometheus, skopeo, htpasswd). Idempotent: does nothing when all are present.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
missing=()
for p in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && { echo "[install-packages] all present" >&2; exit 0; }
sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
echo "[install-packages] installing ${missing[*]}" >&2
# The packages' own services must not start: the project runs each one itself, with its
# own ports and directories, and there may be no init system at all.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e $policy ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee $policy >/dev/null; $sudo chmod +x $policy; created_policy=1
fi
trap '[ $created_policy = 1 ] && $sudo rm -f $policy' EXIT
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "[install-packages] done" >&2
