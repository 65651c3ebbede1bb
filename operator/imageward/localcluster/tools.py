"""Where the locally built tools live, and a clear error when one is missing.

`hack/build-tools.sh` (run by `make tools`) builds them into the cache; nothing here builds.
"""

from __future__ import annotations

import os
import pathlib
import shutil

from imageward import errors

# Debian packages, found on PATH or in /usr/sbin; the rest come from the build cache.
_SYSTEM_TOOLS = frozenset(
    {
        "docker-registry",
        "containerd",
        "ctr",
        "runc",
        "prometheus",
        "htpasswd",
        "skopeo",
        # the real node's host tools (containernetworking-plugins, iptables, nftables)
        "nft",
        "iptables",
        "iptables-save",
        "iptables-restore",
        "ip6tables-save",
        "ip6tables-restore",
        "iptables-legacy-save",
        "ip6tables-legacy-save",
        "conntrack",
    }
)


class ToolMissingError(errors.ImagewardError):
    def __init__(self, name: str, looked_in: list[str]) -> None:
        self.name = name
        hint = "run `make tools`" if name not in _SYSTEM_TOOLS else "run `make packages`"
        super().__init__(f"{name} not found (looked in {', '.join(looked_in)}); {hint}")


def cache_dir() -> pathlib.Path:
    return pathlib.Path(
        os.environ.get("IMAGEWARD_CACHE") or pathlib.Path.home() / ".cache" / "imageward"
    )


def bin_dir() -> pathlib.Path:
    return cache_dir() / "bin"


def find(name: str) -> pathlib.Path:
    """The path of tool `name`: the project's build cache first, then PATH."""
    candidate = bin_dir() / name
    if candidate.exists():
        return candidate.resolve()
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found:
        return pathlib.Path(found)
    raise ToolMissingError(name, [str(bin_dir()), "PATH"])
