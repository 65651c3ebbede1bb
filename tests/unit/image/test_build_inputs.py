"""The image's cache key covers exactly what the build reads: every file .dockerignore
admits into the context, the Dockerfile, the build scripts and the base's versions;
nothing else (a README or test edit must not rebuild the image)."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
#: What hack/build-image.sh hashes besides the context: the recipe and the base.
RECIPE = ("Dockerfile", ".dockerignore", "hack/build-image.sh", "hack/image-base.sh")


def allow_list() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line[1:].rstrip("/") for line in lines if line.startswith("!")]


@pytest.fixture
def checkout(tmp_path: pathlib.Path) -> pathlib.Path:
    """A copy of what the key reads, plus files it must ignore."""
    copy = tmp_path / "checkout"
    for name in [*RECIPE, *allow_list(), "hack/versions.env", "README.md"]:
        source, target = ROOT / name, copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    (copy / "tests").mkdir()
    (copy / "tests" / "test_x.py").write_text("")
    return copy


def key(checkout: pathlib.Path) -> str:
    result = subprocess.run(
        ["bash", str(checkout / "hack" / "build-image.sh"), "--key"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout.strip()


def touch(path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write("\n# edited\n")


def test_the_context_is_the_package_its_metadata_and_the_build_helpers() -> None:
    assert sorted(allow_list()) == [
        "LICENSE",
        "hack/constraints.txt",
        "hack/static-helper/imageward-helper.c",
        "hack/trim-venv.py",
        "operator",
        "pyproject.toml",
    ]


def test_the_key_is_stable(checkout: pathlib.Path) -> None:
    first = key(checkout)

    assert len(first) == 20
    assert key(checkout) == first


@pytest.mark.parametrize(
    "edited",
    [
        *RECIPE,
        "pyproject.toml",
        "LICENSE",
        "hack/static-helper/imageward-helper.c",
        "hack/trim-venv.py",
        "hack/constraints.txt",
        "operator/imageward/cli.py",
        "operator/imageward/new_module.py",
    ],
)
def test_every_input_changes_the_key(checkout: pathlib.Path, edited: str) -> None:
    before = key(checkout)
    touch(checkout / edited)

    assert key(checkout) != before


@pytest.mark.parametrize(
    "edited",
    [
        "README.md",  # the build writes a stub: README edits never rebuild the image
        "tests/test_x.py",
        "operator/imageward/__pycache__/cli.cpython-311.pyc",
        "operator/imageward.egg-info/PKG-INFO",
    ],
)
def test_what_the_build_does_not_read_leaves_the_key(checkout: pathlib.Path, edited: str) -> None:
    before = key(checkout)
    touch(checkout / edited)

    assert key(checkout) == before


def test_the_base_versions_are_in_the_key_and_other_tool_versions_are_not(
    checkout: pathlib.Path,
) -> None:
    versions = checkout / "hack" / "versions.env"
    text = versions.read_text()
    before = key(checkout)

    versions.write_text(text.replace("KUBERNETES_VERSION=", "KUBERNETES_VERSION=9"))
    assert key(checkout) == before
    versions.write_text(text.replace("IMAGE_DEBIAN_SUITE=bookworm", "IMAGE_DEBIAN_SUITE=trixie"))
    assert key(checkout) != before
