"""Where docker, podman and skopeo keep registry credentials on this machine.

Apart from `auth`, which parses them: `imageward check` looks for these files in
every run, and imports the parser only when one exists.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping


def default_docker_config_paths(
    environ: Mapping[str, str] | None = None,
) -> list[pathlib.Path]:
    """Where docker, podman and skopeo keep credentials, in the order they read them."""
    environ = os.environ if environ is None else environ
    home = pathlib.Path(environ.get("HOME") or pathlib.Path.home())
    paths = []
    if environ.get("REGISTRY_AUTH_FILE"):
        paths.append(pathlib.Path(environ["REGISTRY_AUTH_FILE"]))
    if environ.get("XDG_RUNTIME_DIR"):
        paths.append(pathlib.Path(environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    docker_dir = pathlib.Path(environ["DOCKER_CONFIG"]) if environ.get("DOCKER_CONFIG") else None
    paths.append((docker_dir or home / ".docker") / "config.json")
    paths.append(home / ".dockercfg")
    return paths
