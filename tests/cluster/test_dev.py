"""`imageward dev` gives a usable cluster and stops everything on Ctrl-C."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from imageward import dev
from imageward.localcluster import tools

pytestmark = pytest.mark.cluster


def _children_of(pid: int) -> set[int]:
    """Every live descendant of `pid`, read from /proc (ps may not be installed)."""
    parents: dict[int, int] = {}
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces; the fields after its closing ")" do not.
        fields = stat.rsplit(")", 1)[1].split()
        parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def test_dev_starts_a_usable_cluster_and_stops_cleanly(tmp_path: pathlib.Path) -> None:
    state = tmp_path / "dev"
    process = subprocess.Popen(
        [sys.executable, "-m", "imageward", "dev", "--nodes", "2", "--state-dir", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    output: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            output.append(line)
            if "Press Ctrl-C" in line:
                break
        text = "".join(output)
        assert dev.READY_LINE in text, text
        kubeconfig = state / "kubeconfig"
        assert f"export KUBECONFIG={kubeconfig}" in text

        nodes = subprocess.run(
            [
                str(tools.find("kubectl")),
                f"--kubeconfig={kubeconfig}",
                "get",
                "nodes",
                "-o",
                "name",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert nodes == ["node/kwok-node-0", "node/kwok-node-1"]
        crds = subprocess.run(
            [str(tools.find("kubectl")), f"--kubeconfig={kubeconfig}", "get", "crd", "-o", "name"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "imagepolicies.imageward.io" in crds
        children = _children_of(process.pid)
        assert len(children) >= 6  # etcd, apiserver, controller-manager, scheduler, kwok, ...
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    assert process.returncode == 0, "".join(output) + rest
    assert "Stopped." in rest
    leftovers = {pid for pid in children if pathlib.Path(f"/proc/{pid}").exists()}
    assert not leftovers, f"processes left running after Ctrl-C: {leftovers}"
