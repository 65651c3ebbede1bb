"""Where docker, podman and skopeo keep registry credentials on this machine.

Apart from `auth`, which parses them: `imageward check` looks for these files in
every run, and imports the parser only when one exists. It needs no `pathlib` for that
(pathlib brings `urllib.parse` and `ipaddress`): `default_docker_config_files` gives the
paths as the text `pathlib` would make of them, and `is_file` answers as
`pathlib.Path.is_file` does.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (PEP 781)

if TYPE_CHECKING:
    import pathlib

#: The errors `pathlib.Path.is_file` reads as "no such file" (pathlib._IGNORED_ERRNOS).
_NOT_THERE = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)


def default_docker_config_paths(
    environ: Mapping[str, str] | None = None,
) -> list[pathlib.Path]:
    """Where docker, podman and skopeo keep credentials, in the order they read them."""
    import pathlib

    return [pathlib.Path(text) for text in default_docker_config_files(environ)]


def default_docker_config_files(environ: Mapping[str, str] | None = None) -> list[str]:
    """`default_docker_config_paths` as text (each `str()` of that path)."""
    environ = os.environ if environ is None else environ
    home = environ.get("HOME") or _home()
    paths = []
    if environ.get("REGISTRY_AUTH_FILE"):
        paths.append(build_path_text(environ["REGISTRY_AUTH_FILE"]))
    if environ.get("XDG_RUNTIME_DIR"):
        paths.append(build_path_text(environ["XDG_RUNTIME_DIR"], "containers", "auth.json"))
    docker_dir = environ.get("DOCKER_CONFIG") or build_path_text(home, ".docker")
    paths.append(build_path_text(docker_dir, "config.json"))
    paths.append(build_path_text(home, ".dockercfg"))
    return paths


def _home() -> str:
    """`pathlib.Path.home()`, as text."""
    home = os.path.expanduser("~")
    if home[:1] == "~":
        raise RuntimeError("Could not determine home directory.")
    return home


def build_path_text(*parts: str) -> str:
    """`str(pathlib.PurePosixPath(*parts))`: empty and `.` components dropped, a later
    absolute part starting over, `//` kept only as the whole root, `.` for nothing."""
    root = ""
    names: list[str] = []
    for part in reversed(parts):
        if not part:
            continue
        stripped = part.lstrip("/")
        names.extend(n for n in reversed(stripped.split("/")) if n and n != ".")
        if stripped != part:
            root = "//" if len(part) - len(stripped) == 2 else "/"
            break
    names.reverse()
    return root + "/".join(names) if root or names else "."


def is_file(path: str) -> bool:
    """`pathlib.Path(path).is_file()`: a regular file (symlinks followed); False for a
    path that is not there, and the other errors of stat raised, as pathlib raises them."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError as e:
        if e.errno not in _NOT_THERE:
            raise
        return False
    except ValueError:
        return False
