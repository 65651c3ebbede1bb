"""`imageward dev` gives a usable cluster, what it prints is true, and it stops everything
on Ctrl-C; `--real-node` adds a real kubelet node whose pods really run, and puts the host
back as it was."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from imageward import dev
from imageward.localcluster import realnode, tools
from tests import utils

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


class Dev:
    """`imageward dev` running in a subprocess, with what it printed until it was ready."""

    def __init__(self, state: pathlib.Path, *args: str) -> None:
        self.state = state
        self.kubeconfig = state / "kubeconfig"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "imageward", "dev", "--state-dir", str(state), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        output: list[str] = []
        assert self.process.stdout is not None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            output.append(line)
            if "Press Ctrl-C" in line:
                break
        self.text = "".join(output)

    def kubectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(tools.find("kubectl")), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    def tries(self) -> list[tuple[list[str], str]]:
        """The `kubectl ... run ...` lines it printed: (arguments after kubectl, outcome)."""
        found = []
        for line in self.text.splitlines():
            command, _, outcome = line.strip().partition("#")
            if command.startswith("kubectl ") and " run " in command:
                found.append((shlex.split(command)[1:], outcome.strip()))
        return found

    def stop(self) -> str:
        self.process.send_signal(signal.SIGINT)
        rest, _ = self.process.communicate(timeout=90)
        return rest


@pytest.fixture
def dev_run(tmp_path: pathlib.Path) -> Iterator[list[Dev]]:
    started: list[Dev] = []
    yield started
    for run in started:
        if run.process.poll() is None:
            run.stop()


def test_dev_starts_a_usable_cluster_and_stops_cleanly(
    tmp_path: pathlib.Path, dev_run: list[Dev]
) -> None:
    run = Dev(tmp_path / "dev", "--nodes", "2")
    dev_run.append(run)
    assert dev.READY_LINE in run.text, run.text
    assert f"export KUBECONFIG={run.kubeconfig}" in run.text

    nodes = run.kubectl("get", "nodes", "-o", "name").stdout.split()
    assert nodes == ["node/kwok-node-0", "node/kwok-node-1"]
    assert "imagepolicies.imageward.io" in run.kubectl("get", "crd", "-o", "name").stdout
    children = _children_of(run.process.pid)
    assert len(children) >= 6  # etcd, apiserver, controller-manager, scheduler, kwok, ...

    # Every "kubectl run" it prints does what its comment says (server-side dry run: the
    # webhooks answer, nothing is created).
    digests = dict(re.findall(r"image (\S+)\s+\((sha256:[0-9a-f]+)…\)", run.text))
    tries = run.tries()
    assert len(tries) == 4, run.text
    for args, outcome in tries:
        result = run.kubectl(*args, "--dry-run=server", "-o", "json")
        said = f"kubectl {shlex.join(args)}  # {outcome}"
        if "refused" in outcome:
            assert result.returncode != 0, f"{said}\nwas admitted: {result.stdout}"
            if "signed-only" in outcome:
                assert "ImagePolicy signed-only" in result.stderr, f"{said}\n{result.stderr}"
            if "size-limits warning" in outcome:
                assert "size-limits" in result.stderr, f"{said}\n{result.stderr}"
            continue
        assert "admitted" in outcome, said
        assert result.returncode == 0, f"{said}\n{result.stderr}"
        image = json.loads(result.stdout)["spec"]["containers"][0]["image"]
        requested = next(a.split("=", 1)[1] for a in args if a.startswith("--image="))
        if "pinned to its digest" in outcome:
            assert image.startswith(requested + "@" + digests[requested]), f"{said}\n{image}"
        else:
            assert image == requested, f"{said}\nbut the image became {image}"

    rest = run.stop()
    assert run.process.returncode == 0, run.text + rest
    assert "Stopped." in rest
    leftovers = {pid for pid in children if pathlib.Path(f"/proc/{pid}").exists()}
    assert not leftovers, f"processes left running after Ctrl-C: {leftovers}"


def test_dev_with_a_real_node_runs_real_pods_and_restores_the_host(
    tmp_path: pathlib.Path, dev_run: list[Dev], real_node_slot: None
) -> None:
    before = realnode.take_host_snapshot()
    run = Dev(tmp_path / "dev", "--nodes", "1", "--real-node")
    dev_run.append(run)
    assert dev.READY_LINE in run.text, run.text
    assert f"real node      {realnode.NODE_NAME}" in run.text, run.text
    nodes = run.kubectl("get", "nodes", "-o", "name").stdout.split()
    assert nodes == ["node/kwok-node-0", f"node/{realnode.NODE_NAME}"]

    real = [args for args, outcome in run.tries() if "a real pod" in outcome]
    assert real, run.text
    created = run.kubectl(*real[0])
    assert created.returncode == 0, created.stderr

    def running_on_the_real_node() -> dict[str, str] | None:
        pod = json.loads(run.kubectl("get", "pod", "real", "-n", "shop", "-o", "json").stdout)
        if pod.get("status", {}).get("phase") == "Running":
            return {"node": pod["spec"]["nodeName"], "ip": pod["status"]["podIP"]}
        return None

    placed = utils.wait_for("the demo pod Running", running_on_the_real_node, timeout=90)
    assert placed["node"] == realnode.NODE_NAME
    assert placed["ip"].startswith(realnode.POD_CIDR.rsplit(".", 2)[0])

    rest = run.stop()
    assert run.process.returncode == 0, run.text + rest
    changes = realnode.host_changes(before)
    assert not changes, "imageward dev --real-node left the host changed:\n" + "\n".join(changes)
