"""Trim the image's virtualenv of what never runs, then prove nothing left needs it.

Run by the Dockerfile with the virtualenv's own interpreter (standard library only):

  trim-venv.py trim VENV REQUIREMENTS REPORT   # deps stage, before imageward is installed
  trim-venv.py verify VENV REPORT              # build stage, imageward installed
  trim-venv.py collect VENV DIST DEST          # copy one distribution's files under DEST

`trim` removes, in order, and prints what each step saved:

1. whole modules nobody imports, named in REMOVED_MODULES with the reason;
2. test modules shipped inside packages (`tests/` directories, `*_test.py` files);
3. the bytecode (not the source) of modules that no import statement reachable from the
   required distributions names: a module found only by a dynamic import still works,
   compiled in memory on first use.

`trim` then fails when an import statement left anywhere in the virtualenv names a module
step 1 or 2 removed. `verify` does the same for imageward's own modules, refuses an import
of a module whose bytecode step 3 pruned, then imports every imageward module.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import json
import pathlib
import pkgutil
import re
import shutil
import sys
from collections.abc import Iterable, Iterator

#: module (a package or a single module, source or extension) -> why it can go.
#: Checked by `trim` and `verify`: nothing may import these.
REMOVED_MODULES = {
    "kubernetes.aio": (
        "kubernetes >= 35 ships an asyncio copy of the whole client (67 MB with bytecode); "
        "`import kubernetes` does not load it, imageward uses the synchronous client "
        "(imageward/kube.py) and Kopf its own aiohttp client"
    ),
    **{
        f"cel_expr_python.ext.{name}": (
            "each CEL extension is a 5 MB library of its own (cel-cpp linked in again); "
            "imageward/attestations/cel.py loads ext_bindings, ext_optional and ext_strings"
        )
        for name in ("ext_math", "ext_encoders", "ext_proto")
    },
}

_CACHE_TAG = sys.implementation.cache_tag  # cpython-311


def site_packages(venv: pathlib.Path) -> pathlib.Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if len(found) != 1:
        raise SystemExit(f"expected one site-packages under {venv}, found {found}")
    return found[0]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(line: str) -> str | None:
    line = line.split("#", 1)[0].strip()
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
    return _normalise(match.group(0)) if match else None


# -- the module graph ---------------------------------------------------------------------


def discover_modules(sp: pathlib.Path) -> dict[str, pathlib.Path]:
    """Every importable pure-Python module under `sp`: dotted name -> source file."""
    modules: dict[str, pathlib.Path] = {}
    for path in sp.rglob("*.py"):
        parts = list(path.relative_to(sp).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts and all(part.isidentifier() for part in parts):
            modules[".".join(parts)] = path
    return modules


_parsed: dict[pathlib.Path, list[tuple[str, int]]] = {}


def imported_names(name: str, path: pathlib.Path) -> list[tuple[str, int]]:
    """Modules (and maybe attributes) import statements in `path` name, with their lines.

    `from a import b` gives both `a` and `a.b` (b may be a submodule). Calls of
    `import_module("x")` / `__import__("x")` with a literal count too.
    """
    if path not in _parsed:
        _parsed[path] = list(_imported_names(name, path))
    return _parsed[path]


def _imported_names(name: str, path: pathlib.Path) -> Iterator[tuple[str, int]]:
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError):
        return
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                if node.level > 1:
                    base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if module:
                yield module, node.lineno
            for alias in node.names:
                yield f"{module}.{alias.name}" if module else alias.name, node.lineno
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0]
            if (
                called in ("import_module", "__import__")
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and not first.value.startswith(".")
            ):
                yield first.value, node.lineno


def reachable(modules: dict[str, pathlib.Path], roots: Iterable[str]) -> set[str]:
    """Modules reachable from `roots` by import statements (importing a.b.c imports a, a.b)."""
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        parts = stack.pop().split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in modules and prefix not in seen:
                seen.add(prefix)
                stack.extend(n for n, _ in imported_names(prefix, modules[prefix]))
    return seen


def _is_under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _bytecode(source: pathlib.Path) -> list[pathlib.Path]:
    return sorted((source.parent / "__pycache__").glob(f"{source.stem}.{_CACHE_TAG}*.pyc"))


def _size(path: pathlib.Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


# -- trim ---------------------------------------------------------------------------------


def top_level_modules(sp: pathlib.Path, distributions: Iterable[str]) -> set[str]:
    """The top-level import names the installed `distributions` provide (from RECORD)."""
    wanted = {_normalise(d) for d in distributions}
    tops: set[str] = set()
    for dist in importlib.metadata.distributions(path=[str(sp)]):
        if _normalise(dist.metadata["Name"] or "") not in wanted:
            continue
        for file in dist.files or []:
            first = file.parts[0]
            if first == ".." or first.endswith((".dist-info", ".data")) or first == "__pycache__":
                continue
            name = first.split(".")[0] if len(file.parts) == 1 else first
            if name.isidentifier():
                tops.add(name)
    return tops


def trim(venv: pathlib.Path, requirements: pathlib.Path, report: pathlib.Path) -> None:
    sp = site_packages(venv)
    before = _size(sp)
    removed: list[str] = []
    print(f"trim-venv: site-packages {before / 1e6:.1f} MB")

    # 1. Whole modules nobody imports.
    saved = 0
    for module in REMOVED_MODULES:
        path = sp.joinpath(*module.split("."))
        files = [p for p in path.parent.glob(f"{path.name}.*") if p.is_file()]
        files += _bytecode(path.with_suffix(".py"))
        if not path.is_dir() and not files:
            continue
        if path.is_dir():
            saved += _size(path)
            shutil.rmtree(path)
        for file in files:
            saved += _size(file)
            file.unlink()
        removed.append(module)
    print(f"trim-venv: 1. unused modules {sorted(REMOVED_MODULES)}: -{saved / 1e6:.1f} MB")

    # 2. Test modules inside packages.
    saved, tests = 0, 0
    modules = discover_modules(sp)
    test_dirs = sorted(
        {
            p
            for p in sp.rglob("*")
            if p.is_dir()
            and p.name in ("tests", "test")
            and p.parent != sp
            and (p.parent / "__init__.py").exists()
        }
    )
    for path in test_dirs:
        if path.exists():
            saved += _size(path)
            shutil.rmtree(path)
            removed.append(".".join(path.relative_to(sp).parts))
            tests += 1
    for name, path in sorted(modules.items()):
        if path.name.endswith("_test.py") and path.exists():
            for file in [path, *_bytecode(path)]:
                saved += _size(file)
                file.unlink()
            removed.append(name)
            tests += 1
    print(f"trim-venv: 2. test modules ({tests}): -{saved / 1e6:.1f} MB")

    # 3. Bytecode of modules no import statement from the required distributions reaches.
    names = [n for n in map(_requirement_name, requirements.read_text().splitlines()) if n]
    roots = top_level_modules(sp, names) | {"imageward"}  # imageward: when trimming a full venv
    modules = discover_modules(sp)
    root_modules = [m for m in modules if m.split(".")[0] in roots]
    keep = reachable(modules, root_modules)
    pruned: list[str] = []
    saved = 0
    for name, path in sorted(modules.items()):
        if name in keep:
            continue
        files = _bytecode(path)
        if files:
            saved += sum(_size(f) for f in files)
            for file in files:
                file.unlink()
            pruned.append(name)
    print(
        f"trim-venv: 3. bytecode of {len(pruned)} modules unreachable from "
        f"{sorted(roots)}: -{saved / 1e6:.1f} MB"
    )

    after = _size(sp)
    print(f"trim-venv: site-packages {after / 1e6:.1f} MB (-{(before - after) / 1e6:.1f} MB)")
    problems = imports_of_removed(modules, removed, sp)
    if problems:
        raise SystemExit("trim-venv: trim failed:\n  " + "\n  ".join(problems))
    report.write_text(json.dumps({"removed": removed, "bytecode_pruned": pruned}, indent=1) + "\n")


# -- verify -------------------------------------------------------------------------------


def imports_of_removed(
    modules: dict[str, pathlib.Path], removed: Iterable[str], sp: pathlib.Path
) -> list[str]:
    """Import statements in `modules` that name a removed module, as "file:line ..." lines."""
    removed = list(removed)
    return [
        f"{path.relative_to(sp)}:{line} imports {imported}, which hack/trim-venv.py "
        "removes: keep it (edit REMOVED_MODULES)"
        for name, path in sorted(modules.items())
        for imported, line in imported_names(name, path)
        if _is_under(imported, removed)
    ]


def verify(venv: pathlib.Path, report: pathlib.Path, *, import_all: bool = True) -> None:
    """Check imageward against what `trim` removed, then import every imageward module.

    `trim` already proved that no dependency imports a removed module, and what it kept is
    closed under imports; so only imageward's own import statements need reading: one
    naming a removed module, or a module whose bytecode was pruned, is refused.
    """
    sp = site_packages(venv)
    trimmed = json.loads(report.read_text())
    removed: list[str] = trimmed["removed"]
    pruned = set(trimmed["bytecode_pruned"])
    own = {n: p for n, p in discover_modules(sp).items() if n.split(".")[0] == "imageward"}
    problems = imports_of_removed(own, removed, sp)
    for name, path in sorted(own.items()):
        for imported, line in imported_names(name, path):
            parts = imported.split(".")
            for prefix in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):
                if prefix in pruned:
                    problems.append(
                        f"{path.relative_to(sp)}:{line} imports {prefix}, whose bytecode "
                        "was pruned: add its distribution to pyproject.toml's dependencies "
                        "(the roots of step 3)"
                    )
    if problems:
        raise SystemExit("trim-venv: verify failed:\n  " + "\n  ".join(problems))
    if not import_all:
        return

    import imageward  # the virtualenv's own: this script runs with its interpreter

    count = 0
    for info in pkgutil.walk_packages(imageward.__path__, "imageward."):
        if info.name.rpartition(".")[2] == "__main__":
            continue  # runs the command line
        importlib.import_module(info.name)
        count += 1
    print(f"trim-venv: verify ok: {count} imageward modules import, none of what was trimmed")


# -- collect ------------------------------------------------------------------------------


def collect(venv: pathlib.Path, dist: str, dest: pathlib.Path) -> None:
    """Copy every file of installed distribution `dist` to DEST/<its absolute path>."""
    sp = site_packages(venv)
    files = importlib.metadata.distribution(dist).files or []
    copied = 0
    for file in files:
        source = (sp / file).resolve()
        if not source.is_file():
            continue  # RECORD lists pyc files pip wrote; all exist, but be tolerant
        target = dest / source.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        copied += 1
    print(f"trim-venv: collected {copied} files of {dist} under {dest}")


def main(argv: list[str]) -> None:
    match argv:
        case ["trim", venv, requirements, report]:
            trim(pathlib.Path(venv), pathlib.Path(requirements), pathlib.Path(report))
        case ["verify", venv, report]:
            verify(pathlib.Path(venv), pathlib.Path(report))
        case ["collect", venv, dist, dest]:
            collect(pathlib.Path(venv), dist, pathlib.Path(dest))
        case _:
            raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
