"""configpaths names and tests files exactly as pathlib would, without importing it."""

from __future__ import annotations

import os
import pathlib
import random
from collections.abc import Mapping

import pytest

from imageward.registry import configpaths


def _pathlib_paths(environ: Mapping[str, str]) -> list[pathlib.Path]:
    """default_docker_config_paths as it was written with pathlib."""
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


SPELLINGS = ["", ".", "./", "/", "//", "///", "a", "a/", "a//b", "./a/./b/.", "/a/../b", "//a", "~"]


def test_path_text_is_pathlibs() -> None:
    rng = random.Random(7)
    pieces = [*SPELLINGS, "x.yaml", "x.yaml/", "..", "a b", "ä"]
    cases = [[s] for s in pieces] + [
        [rng.choice(pieces) for _ in range(rng.randint(1, 4))] for _ in range(2000)
    ]
    for parts in cases:
        assert configpaths.build_path_text(*parts) == str(pathlib.PurePosixPath(*parts)), parts


@pytest.mark.parametrize("home", ["/home/u", "/home/u/", "//h", ".", "rel/h", ""])
@pytest.mark.parametrize("other", ["", "/etc/x", "rel", "./a/", "//r", "/"])
def test_default_files_are_the_pathlib_paths(home: str, other: str) -> None:
    for names in [(), ("DOCKER_CONFIG",), ("XDG_RUNTIME_DIR", "REGISTRY_AUTH_FILE"), None]:
        keys = names if names is not None else ("DOCKER_CONFIG", "XDG_RUNTIME_DIR")
        environ = {"HOME": home, **dict.fromkeys(keys, other)}
        expected = _pathlib_paths(environ)
        assert configpaths.default_docker_config_files(environ) == [str(p) for p in expected]
        assert configpaths.default_docker_config_paths(environ) == expected


def test_is_file_is_pathlibs(tmp_path: pathlib.Path) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    (tmp_path / "to-file").symlink_to(tmp_path / "file")
    (tmp_path / "dangling").symlink_to(tmp_path / "missing")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    os.mkfifo(tmp_path / "fifo")
    for name in ["file", "dir", "to-file", "dangling", "loop", "fifo", "missing", "file/x", ""]:
        path = tmp_path / name
        assert configpaths.is_file(str(path)) == path.is_file(), name
    assert configpaths.is_file("a\0b") is pathlib.Path("a\0b").is_file() is False
