"""hack/trim-venv.py on a small made-up virtualenv: what it removes, what it keeps, and
that `verify` refuses a virtualenv in which something still imports what was removed."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import py_compile
import types
from collections.abc import Mapping

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def trim_venv() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("trim_venv", ROOT / "hack" / "trim-venv.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def install(sp: pathlib.Path, name: str, files: Mapping[str, str]) -> None:
    """Files of distribution `name`, compiled as pip does, with a RECORD listing them."""
    record = []
    for relative, text in files.items():
        path = sp / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        record.append(relative)
        compiled = pathlib.Path(py_compile.compile(str(path), doraise=True))
        record.append(str(compiled.relative_to(sp)))
    info = sp / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "RECORD").write_text("".join(f"{r},,\n" for r in record))


@pytest.fixture
def venv(tmp_path: pathlib.Path) -> pathlib.Path:
    venv = tmp_path / "venv"
    sp = venv / "lib" / "python3.11" / "site-packages"
    install(
        sp,
        "kubernetes",
        {
            "kubernetes/__init__.py": "from . import client\n",
            "kubernetes/client.py": "import urllib3\n",
            "kubernetes/aio/__init__.py": "from kubernetes.aio import client\n",
            "kubernetes/aio/client.py": "import aiohttp\n",
            "kubernetes/config/__init__.py": "",
            "kubernetes/config/kube_config_test.py": "import kubernetes\n",
        },
    )
    install(
        sp,
        "urllib3",
        {
            "urllib3/__init__.py": "from .util import retry\n",
            "urllib3/util/__init__.py": "",
            "urllib3/util/retry.py": "",
            "urllib3/contrib/socks.py": "import socks\n",
            "urllib3/tests/__init__.py": "",
            "urllib3/tests/test_retry.py": "import urllib3\n",
        },
    )
    install(sp, "rich", {"rich/__init__.py": "", "rich/console.py": ""})
    ext = sp / "cel_expr_python" / "ext"
    ext.mkdir(parents=True)
    for name in ("ext_math", "ext_strings"):  # extension modules: a library and its stub
        (ext / f"{name}.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
        (ext / f"{name}.pyi").write_text("")
    return venv


def run_trim(trim_venv: types.ModuleType, venv: pathlib.Path, tmp_path: pathlib.Path) -> dict:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("kubernetes>=31  # the client\n")
    report = tmp_path / "trimmed.json"
    trim_venv.trim(venv, requirements, report)
    result: dict = json.loads(report.read_text())
    return result


def pyc(path: pathlib.Path) -> list[pathlib.Path]:
    return sorted((path.parent / "__pycache__").glob(f"{path.stem}.*.pyc"))


def test_trim_removes_unused_packages_tests_and_unreachable_bytecode(
    trim_venv: types.ModuleType, venv: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    sp = trim_venv.site_packages(venv)
    report = run_trim(trim_venv, venv, tmp_path)

    assert not (sp / "kubernetes" / "aio").exists()
    assert not (sp / "kubernetes" / "config" / "kube_config_test.py").exists()
    assert not (sp / "urllib3" / "tests").exists()
    assert sorted(ext.name for ext in (sp / "cel_expr_python" / "ext").iterdir()) == [
        "ext_strings.cpython-311-x86_64-linux-gnu.so",
        "ext_strings.pyi",
    ]
    assert sorted(report["removed"]) == [
        "cel_expr_python.ext.ext_math",
        "kubernetes.aio",
        "kubernetes.config.kube_config_test",
        "urllib3.tests",
    ]
    # Reachable from the required distribution: source and bytecode stay.
    for kept in ("kubernetes/client.py", "urllib3/__init__.py", "urllib3/util/retry.py"):
        assert (sp / kept).exists() and pyc(sp / kept), kept
    # Unreachable: the source stays (a dynamic import still works), the bytecode goes.
    for unreached in ("urllib3/contrib/socks.py", "rich/console.py"):
        assert (sp / unreached).exists() and not pyc(sp / unreached), unreached
    assert {"urllib3.contrib.socks", "rich", "rich.console"} <= set(report["bytecode_pruned"])


def test_verify_accepts_the_trimmed_venv(
    trim_venv: types.ModuleType, venv: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    run_trim(trim_venv, venv, tmp_path)

    trim_venv.verify(venv, tmp_path / "trimmed.json", import_all=False)


def test_verify_refuses_an_import_of_a_removed_module(
    trim_venv: types.ModuleType, venv: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    run_trim(trim_venv, venv, tmp_path)
    sp = trim_venv.site_packages(venv)
    (sp / "imageward").mkdir()
    (sp / "imageward" / "__init__.py").write_text("def f():\n    from kubernetes import aio\n")

    with pytest.raises(SystemExit, match=r"imageward/__init__.py:2 imports kubernetes.aio"):
        trim_venv.verify(venv, tmp_path / "trimmed.json", import_all=False)


def test_verify_refuses_imageward_reaching_pruned_bytecode(
    trim_venv: types.ModuleType, venv: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    run_trim(trim_venv, venv, tmp_path)
    sp = trim_venv.site_packages(venv)
    (sp / "imageward").mkdir()
    (sp / "imageward" / "__init__.py").write_text("import rich.console\n")

    with pytest.raises(SystemExit, match=r"__init__\.py:1 imports rich\.console, whose bytecode"):
        trim_venv.verify(venv, tmp_path / "trimmed.json", import_all=False)


def test_trim_refuses_when_a_kept_dependency_imports_what_it_removed(
    trim_venv: types.ModuleType, venv: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    sp = trim_venv.site_packages(venv)
    (sp / "urllib3" / "util" / "retry.py").write_text("import kubernetes.aio.client\n")

    with pytest.raises(SystemExit, match=r"urllib3/util/retry\.py:1 imports kubernetes\.aio"):
        run_trim(trim_venv, venv, tmp_path)


def test_imageward_never_imports_what_the_image_removes(trim_venv: types.ModuleType) -> None:
    """The build would fail on it; this says so without a build."""
    package = ROOT / "operator"
    modules = trim_venv.discover_modules(package)

    assert trim_venv.imports_of_removed(modules, trim_venv.REMOVED_MODULES, package) == []
