"""What a real node changes on the host: a snapshot taken before it starts, and the means to
put the host back from that snapshot when it stops (or when the next start finds the
leftovers of a run that crashed).

A kubelet, kube-proxy, containerd's CRI and the CNI plugins change the host they run on:
kubelet sets kernel tunables (kernel.panic 1 -> 10, kernel.panic_on_oops 0 -> 1,
vm.overcommit_memory 0 -> 1), the bridge plugin turns on ip_forward, kube-proxy and the
CNI plugins add iptables chains (with iptables-nft, whole nftables tables that iptables
itself can never delete again), pods leave mounts, cgroups, veths and files in fixed
paths. `Snapshot` records all of it as plain data (JSON, so it survives the process that
took it); the `restore_*`/`remove_*` functions undo one kind each and return what they
could not undo, so the caller can say exactly what was left behind.

The snapshot covers where a real node acts, not the whole machine: other users of the
same machine change it at any time (the harness's private containerd instances mount
snapshots and create `/k8s.io/<id>` cgroups with `ctr run`, buildah mounts overlays in
its own store, the machine's process supervisor makes cgroups per command). So mounts are
those at or under the given `mount_scope` (the node's directories) and "/" itself (its
propagation), cgroups are each hierarchy's top-level groups plus the whole tree of the
ones given in `cgroup_trees` (kubepods); sysctls, nftables, links and paths are complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import pathlib
import re
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from imageward.localcluster import tools

_SYSCTL_ROOT = pathlib.Path("/proc/sys")
_NET_ROOT = pathlib.Path("/sys/class/net")

#: Writable sysctls the kernel changes by itself: never compared, never restored.
VOLATILE_SYSCTLS = frozenset(
    {
        "kernel.ns_last_pid",  # every fork
        "kernel.perf_event_max_sample_rate",  # lowered by the kernel when sampling is slow
        "kernel.tainted",  # set by warnings
        "kernel.hung_task_warnings",  # counts down
    }
)

#: Top-level cgroups that `ctr run` makes (one per containerd namespace) for the harness's
#: other containerd instances; the real node's pods live under `kubepods`.
FOREIGN_CGROUPS = frozenset({"k8s.io", "default"})

_PER_INTERFACE = re.compile(r"^net\.ipv[46]\.(?:conf|neigh)\.([^.]+)\.")
_COUNTER = re.compile(r"counter packets \d+ bytes \d+ ?")


class HostStateError(RuntimeError):
    """A host command needed to take or restore a snapshot failed."""


# -- mounts -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class Mount:
    mount_point: str
    fstype: str
    source: str
    #: mountinfo's optional fields without peer group numbers ("shared", "master", ...):
    #: kubelet makes its root directory rshared; this catches it spreading further.
    propagation: str

    def to_json(self) -> list[str]:
        return [self.mount_point, self.fstype, self.source, self.propagation]

    @classmethod
    def from_json(cls, value: Sequence[str]) -> Mount:
        return cls(*value)


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """Mounts from /proc/self/mountinfo text, in mount order."""
    mounts = []
    for line in text.splitlines():
        if not line.strip():
            continue
        before, _, after = line.partition(" - ")
        fields = before.split()
        fstype, source, *_ = [*after.split(), "", ""]
        optional = " ".join(sorted(re.sub(r":\d+", "", f) for f in fields[6:]))
        mounts.append(Mount(_unescape(fields[4]), fstype, _unescape(source), optional))
    return mounts


def read_mounts() -> list[Mount]:
    return parse_mountinfo(pathlib.Path("/proc/self/mountinfo").read_text())


def _under(path: str, prefixes: Iterable[str]) -> bool:
    return any(path == p.rstrip("/") or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def unmount_under(prefixes: Sequence[str]) -> list[str]:
    """Unmount every mount at or below `prefixes`, deepest first; returns what stayed."""
    for _ in range(5):  # mounts can be stacked on one point: go again until none is left
        targets = sorted(
            {m.mount_point for m in read_mounts() if _under(m.mount_point, prefixes)},
            key=lambda p: (p.count("/"), p),
            reverse=True,
        )
        if not targets:
            return []
        for target in targets:
            result = subprocess.run(["umount", target], capture_output=True, text=True)
            if result.returncode != 0:
                # Busy (a process still has it open): detach it, the kernel frees it later.
                subprocess.run(["umount", "-l", target], capture_output=True, text=True)
    return [
        f"mount {m.mount_point} ({m.fstype}) still mounted"
        for m in read_mounts()
        if _under(m.mount_point, prefixes)
    ]


# -- sysctls -------------------------------------------------------------------------------


def _sysctl_name(path: pathlib.Path) -> str:
    return ".".join(path.relative_to(_SYSCTL_ROOT).parts)


def _sysctl_path(name: str) -> pathlib.Path:
    return _SYSCTL_ROOT.joinpath(*name.split("."))


def read_sysctls() -> dict[str, str]:
    """Every readable and writable sysctl (the ones anything could have changed)."""
    values: dict[str, str] = {}
    for directory, _, files in os.walk(_SYSCTL_ROOT):
        for name in files:
            path = pathlib.Path(directory, name)
            try:
                mode = path.stat().st_mode
                if not (mode & 0o200 and mode & 0o400):
                    continue
                values[_sysctl_name(path)] = path.read_text()
            except OSError:
                continue  # write-only in practice (EINVAL, EPERM) or gone meanwhile
    return values


def interface_of(sysctl: str) -> str | None:
    """The network interface a per-interface sysctl belongs to (None for all/default)."""
    match = _PER_INTERFACE.match(sysctl)
    if match is None or match.group(1) in ("all", "default"):
        return None
    return match.group(1)


def write_sysctl(name: str, value: str) -> None:
    _sysctl_path(name).write_text(value)


def restore_sysctls(before: Mapping[str, str]) -> list[str]:
    """Write back every sysctl whose value changed; returns the ones that would not go back."""
    # ip_forward first: writing it resets every conf.*.forwarding, which are compared next.
    order = sorted(before, key=lambda name: name != "net.ipv4.ip_forward")
    failed: list[str] = []
    for _ in range(2):
        now = read_sysctls()
        failed = []
        for name in order:
            if name in VOLATILE_SYSCTLS or name not in now or now[name] == before[name]:
                continue
            try:
                write_sysctl(name, before[name])
            except OSError as e:
                failed.append(
                    f"sysctl {name}: {now[name].strip()!r} could not go back to "
                    f"{before[name].strip()!r} ({e.strerror})"
                )
    return failed


# -- network links --------------------------------------------------------------------------


def read_links() -> list[str]:
    return sorted(entry.name for entry in _NET_ROOT.iterdir())


def links_with_master(bridge: str) -> list[str]:
    """Interfaces enslaved to `bridge` (the pods' host-side veths)."""
    lower = _NET_ROOT / bridge
    if not lower.exists():
        return []
    return sorted(p.name.removeprefix("lower_") for p in lower.glob("lower_*"))


def delete_link(name: str) -> str | None:
    if not (_NET_ROOT / name).exists():
        return None
    result = subprocess.run(["ip", "link", "delete", name], capture_output=True, text=True)
    if result.returncode != 0 and (_NET_ROOT / name).exists():
        return f"network interface {name} not deleted: {result.stderr.strip()}"
    return None


# -- firewall (nftables, which iptables-nft writes to, and legacy iptables) ---------------


def _run_tool(*argv: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [str(tools.find(argv[0])), *argv[1:]],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except tools.ToolMissingError:
        raise
    except OSError as e:
        raise HostStateError(f"{argv[0]} could not run: {e}") from e


def parse_nft_ruleset(text: str) -> dict[str, str]:
    """`nft list ruleset` text -> {"<family> <table>": table text without counters}."""
    tables: dict[str, str] = {}
    current: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        if current is None:
            match = re.match(r"^table (\S+) (\S+) \{", line)
            if match:
                current = f"{match.group(1)} {match.group(2)}"
                lines = [line]
            continue
        lines.append(_COUNTER.sub("", line))
        if line == "}":
            tables[current] = "\n".join(lines) + "\n"
            current = None
    return tables


def normalise_iptables_save(text: str) -> str:
    """iptables-save text without its comments and counters (what compares equal)."""
    kept = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        kept.append(re.sub(r"\[\d+:\d+\]$", "[0:0]", line))
    return "\n".join(kept) + ("\n" if kept else "")


def read_nftables() -> dict[str, str]:
    result = _run_tool("nft", "list", "ruleset")
    if result.returncode != 0:
        raise HostStateError(f"nft list ruleset failed: {result.stderr.strip()}")
    return parse_nft_ruleset(result.stdout)


def read_iptables_saves() -> dict[str, str]:
    """The iptables-save text of each family (the source a changed table is restored from)."""
    saves = {}
    for family, tool in (("ip", "iptables-save"), ("ip6", "ip6tables-save")):
        result = _run_tool(tool)
        if result.returncode != 0:
            raise HostStateError(f"{tool} failed: {result.stderr.strip()}")
        saves[family] = result.stdout
    return saves


def read_legacy_iptables() -> dict[str, str]:
    """Legacy (x_tables) rules, normalised; they can only be compared, not put back."""
    saves = {}
    for family, tool in (("ip", "iptables-legacy-save"), ("ip6", "ip6tables-legacy-save")):
        try:
            result = _run_tool(tool)
        except tools.ToolMissingError:
            continue
        saves[family] = normalise_iptables_save(result.stdout)
    return saves


def restore_firewall(
    before_tables: Mapping[str, str], before_saves: Mapping[str, str]
) -> list[str]:
    """Put nftables back as it was: delete tables that are new, restore changed ones."""
    left: list[str] = []
    for key, text in read_nftables().items():
        if before_tables.get(key) == text:
            continue
        family, table = key.split(" ", 1)
        if key not in before_tables:
            result = _run_tool("nft", "delete", "table", family, table)
            if result.returncode != 0:
                left.append(f"nftables table {key} not deleted: {result.stderr.strip()}")
            continue
        # A table that existed before and changed: iptables-restore of its saved text
        # flushes it and puts back its chains, policies and rules exactly.
        if family not in before_saves:
            left.append(f"nftables table {key} changed and cannot be put back (family {family})")
            continue
        tool = "iptables-restore" if family == "ip" else "ip6tables-restore"
        result = _run_tool(tool, f"--table={table}", input=before_saves[family])
        if result.returncode != 0:
            left.append(f"{tool} --table={table} failed: {result.stderr.strip()}")
    for key in sorted(set(before_tables) - set(read_nftables())):
        result = _run_tool("nft", "-f", "-", input=before_tables[key])
        if result.returncode != 0:
            left.append(
                f"nftables table {key} was deleted and not re-created: {result.stderr.strip()}"
            )
    return left


# -- cgroups ---------------------------------------------------------------------------------


def cgroup_hierarchies() -> list[pathlib.Path]:
    """Mount points of every cgroup (v1) and cgroup2 hierarchy."""
    return sorted(
        {pathlib.Path(m.mount_point) for m in read_mounts() if m.fstype in ("cgroup", "cgroup2")}
    )


def read_cgroups(trees: Sequence[str] = ()) -> list[str]:
    """Top-level cgroups of every hierarchy (foreign ones left out) and every cgroup below
    the top-level ones named in `trees`, as "<hierarchy>:/<path>"."""
    found = []
    for hierarchy in cgroup_hierarchies():
        for top in sorted(p for p in hierarchy.iterdir() if p.is_dir()):
            if top.name in FOREIGN_CGROUPS:
                continue
            found.append(f"{hierarchy}:/{top.name}")
            if top.name in trees:
                found += [
                    f"{hierarchy}:/{pathlib.Path(d).relative_to(hierarchy)}"
                    for d, _, _ in os.walk(top)
                    if pathlib.Path(d) != top
                ]
    return sorted(found)


def _tree_leaf_first(root: pathlib.Path) -> list[pathlib.Path]:
    if not root.is_dir():
        return []
    directories = [pathlib.Path(d) for d, _, _ in os.walk(root)]
    return sorted(directories, key=lambda p: len(p.parts), reverse=True)


def cgroup_processes(name: str) -> set[int]:
    """Pids in cgroup `name` (a top-level cgroup such as "kubepods") and below it."""
    pids: set[int] = set()
    for hierarchy in cgroup_hierarchies():
        for directory in _tree_leaf_first(hierarchy / name):
            with contextlib.suppress(OSError):
                text = (directory / "cgroup.procs").read_text()
                pids.update(int(line) for line in text.split())
    return pids


def kill_cgroup_processes(name: str, *, timeout: float = 10.0) -> list[str]:
    """SIGKILL every process in cgroup `name` until none is left; returns the survivors."""
    deadline = time.monotonic() + timeout
    while pids := cgroup_processes(name):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            return [f"processes {sorted(pids)} in cgroup {name} survived SIGKILL"]
        time.sleep(0.05)
    return []


def remove_cgroup_tree(name: str, *, timeout: float = 10.0) -> list[str]:
    """Kill every process in cgroup `name`, then remove its directories leaf-first."""
    deadline = time.monotonic() + timeout
    if survivors := kill_cgroup_processes(name, timeout=timeout):
        return survivors
    left = []
    for hierarchy in cgroup_hierarchies():
        for directory in _tree_leaf_first(hierarchy / name):
            for _ in range(50):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    # EBUSY right after the last process exits: the kernel is still
                    # tearing the group down; it clears within milliseconds.
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        left.append(f"cgroup {directory} not removed: {e.strerror}")
                        break
                    time.sleep(0.02)
    return left


# -- the snapshot ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What of the host a real node may change, at one moment."""

    sysctls: Mapping[str, str]
    mounts: tuple[Mount, ...]
    links: tuple[str, ...]
    nftables: Mapping[str, str]
    iptables_saves: Mapping[str, str]
    legacy_iptables: Mapping[str, str]
    cgroups: tuple[str, ...]
    #: fixed paths the node's components use -> whether each existed
    paths: Mapping[str, bool]

    def to_json(self) -> dict[str, Any]:
        return {
            "sysctls": dict(self.sysctls),
            "mounts": [m.to_json() for m in self.mounts],
            "links": list(self.links),
            "nftables": dict(self.nftables),
            "iptables_saves": dict(self.iptables_saves),
            "legacy_iptables": dict(self.legacy_iptables),
            "cgroups": list(self.cgroups),
            "paths": dict(self.paths),
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Snapshot:
        return cls(
            sysctls=dict(value["sysctls"]),
            mounts=tuple(Mount.from_json(m) for m in value["mounts"]),
            links=tuple(value["links"]),
            nftables=dict(value["nftables"]),
            iptables_saves=dict(value["iptables_saves"]),
            legacy_iptables=dict(value["legacy_iptables"]),
            cgroups=tuple(value["cgroups"]),
            paths=dict(value["paths"]),
        )


def take_snapshot(
    paths: Sequence[str], *, mount_scope: Sequence[str], cgroup_trees: Sequence[str] = ()
) -> Snapshot:
    """The host now: every sysctl, nftables table and link; mounts at or under
    `mount_scope` (and "/"); top-level cgroups and the `cgroup_trees`; `paths`' existence."""
    mounts = [
        m for m in read_mounts() if m.mount_point == "/" or _under(m.mount_point, mount_scope)
    ]
    return Snapshot(
        sysctls=read_sysctls(),
        mounts=tuple(sorted(set(mounts))),
        links=tuple(read_links()),
        nftables=read_nftables(),
        iptables_saves=read_iptables_saves(),
        legacy_iptables=read_legacy_iptables(),
        cgroups=tuple(read_cgroups(cgroup_trees)),
        paths={path: os.path.lexists(path) for path in paths},
    )


def _set_changes(kind: str, before: Iterable[Any], after: Iterable[Any]) -> list[str]:
    old, new = set(before), set(after)
    return [f"{kind} added: {item}" for item in sorted(new - old)] + [
        f"{kind} gone: {item}" for item in sorted(old - new)
    ]


def differences(before: Snapshot, after: Snapshot) -> list[str]:
    """Human-readable differences between two snapshots (empty: the host is as it was)."""
    changes: list[str] = []
    for name in sorted(set(before.sysctls) | set(after.sysctls)):
        if name in VOLATILE_SYSCTLS:
            continue
        old, new = before.sysctls.get(name), after.sysctls.get(name)
        if old == new:
            continue
        if old is None or new is None:
            # Per-interface sysctls come and go with their interface (compared as links).
            if interface_of(name) is None:
                state = "added" if old is None else "gone"
                changes.append(f"sysctl {name} {state}")
            continue
        changes.append(f"sysctl {name}: {old.strip()!r} -> {new.strip()!r}")
    changes += _set_changes("mount", before.mounts, after.mounts)
    changes += _set_changes("network interface", before.links, after.links)
    for key in sorted(set(before.nftables) | set(after.nftables)):
        if before.nftables.get(key) != after.nftables.get(key):
            changes.append(f"nftables table {key} differs:\n{after.nftables.get(key, '(gone)')}")
    if before.legacy_iptables != after.legacy_iptables:
        changes.append(f"legacy iptables differ: {dict(after.legacy_iptables)}")
    changes += _set_changes("cgroup", before.cgroups, after.cgroups)
    for path in sorted(set(before.paths) | set(after.paths)):
        if before.paths.get(path) != after.paths.get(path):
            state = "exists" if after.paths.get(path) else "is gone"
            changes.append(f"path {path} {state} (existed before: {before.paths.get(path)})")
    return changes
