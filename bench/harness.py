"""What the admission and check benchmarks start and stop: the local control plane, the
ImagePolicy CRD, policies, and `imageward run` as a child process (as the
`imageward_operator` test fixture runs it), optionally pinned to one CPU with taskset.

Figures from these benchmarks are only as quiet as the machine: `load_note()` prints
the load average next to them.
"""

from __future__ import annotations

import contextlib
import math
import os
import pathlib
import shutil
import ssl
import statistics
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from imageward.localcluster import controlplane, peers, processes

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRDS = ROOT / "crds"
REPORT_CRDS = ROOT / "charts" / "imageward" / "policyreport-crds"
OPERATOR_NAMESPACE = "imageward-system"


def load_note() -> str:
    load = os.getloadavg()[0]
    return f"load average {load:.1f} on {os.cpu_count()} CPUs (figures are noisy when it is high)"


def steal_seconds() -> float:
    """CPU seconds the hypervisor gave to other guests while this machine's CPUs had work
    (`steal` in /proc/stat, summed over CPUs): the same code measured in minutes with
    more of it spends more CPU per request; 0.0 where the kernel does not say."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = stat.readline().split()
    except OSError:
        return 0.0
    if len(fields) < 9 or fields[0] != "cpu":
        return 0.0
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def install_crds(plane: controlplane.ControlPlane) -> None:
    """imageward's CRDs and the PolicyReport ones the chart installs by default (without
    them the background scanner's report caches have nothing to watch)."""
    for crd in [*sorted(CRDS.glob("*.yaml")), *sorted(REPORT_CRDS.glob("*.yaml"))]:
        plane.kubectl("apply", "--server-side", "-f", str(crd))
        plane.kubectl("wait", "--for=condition=Established", "-f", str(crd), "--timeout=30s")


def apply_policy(plane: controlplane.ControlPlane, name: str, spec: Mapping[str, Any]) -> None:
    plane.apply(
        {
            "apiVersion": "imageward.io/v1alpha1",
            "kind": "ImagePolicy",
            "metadata": {"name": name},
            "spec": dict(spec),
        }
    )


def wait_policies_ready(plane: controlplane.ControlPlane, names: Sequence[str]) -> None:
    def ready() -> bool:
        for name in names:
            status = plane.get_json("imagepolicy", name).get("status") or {}
            conditions = status.get("conditions") or []
            if not any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                return False
        return True

    plane.wait_for(f"ImagePolicies {', '.join(names)} Ready", ready, timeout=60)


class Operator:
    """`imageward run --standalone`, webhook on 127.0.0.1, metrics on another port."""

    def __init__(self, process: processes.ManagedProcess, webhook_url: str, metrics_url: str):
        self.process = process
        self.webhook_url = webhook_url
        self.metrics_url = metrics_url

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def cpu_seconds(self) -> float:
        """User + system CPU time of the operator so far, its admission process included
        (IMAGEWARD_ADMISSION_PROCESS=own), from /proc."""
        return peers.process_cpu_seconds(self.pid)

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            text: str = response.read().decode()
            return text


def insecure_context() -> ssl.SSLContext:
    """The webhook's certificate is self-made; the benchmark does not verify it."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@contextlib.contextmanager
def running_operator(
    plane: controlplane.ControlPlane,
    *,
    insecure_registries: Sequence[str],
    workdir: pathlib.Path,
    cpu: int | None = 0,
    env: Mapping[str, str] | None = None,
    profile: pathlib.Path | None = None,
    loopwatch: pathlib.Path | None = None,
) -> Iterator[Operator]:
    """Start the operator (on CPU `cpu` when taskset exists) and stop it afterwards.

    With `loopwatch`, every event-loop callback's CPU time is logged there
    (`bench/loopwatch.py`). With `profile`, it runs under pyinstrument (install it into
    the venv by hand; it is no dependency), which writes a text report there when the
    operator stops.
    """
    port, metrics_port = processes.free_port(), processes.free_port()
    webhook_url = f"https://127.0.0.1:{port}"
    environment = dict(
        os.environ,
        KUBECONFIG=str(plane.kubeconfig),
        IMAGEWARD_NAMESPACE=OPERATOR_NAMESPACE,
        IMAGEWARD_WEBHOOK_HOST="127.0.0.1",
        IMAGEWARD_WEBHOOK_PORT=str(port),
        IMAGEWARD_WEBHOOK_URL=webhook_url,
        IMAGEWARD_METRICS_PORT=str(metrics_port),
        IMAGEWARD_INSECURE_REGISTRIES=",".join(insecure_registries),
    )
    environment.update(env or {})  # the caller's win (e.g. KUBECONFIG of another identity)
    argv = [sys.executable, "-m", "imageward", "run", "--standalone"]
    if profile is not None:
        argv[1:1] = ["-m", "pyinstrument", "-r", "text", "--show-all", "-o", str(profile)]
    elif loopwatch is not None:
        argv[1:1] = [str(ROOT / "bench" / "loopwatch.py"), str(loopwatch)]
    taskset = shutil.which("taskset")
    if cpu is not None and taskset:
        argv = [taskset, "-c", str(cpu), *argv]
    process = processes.ManagedProcess(
        f"imageward-operator-{port}", argv, log_dir=workdir, env=environment, grace=30.0
    )
    process.start()
    operator = Operator(process, webhook_url, f"http://127.0.0.1:{metrics_port}/metrics")
    try:
        processes.wait_for_http(
            operator.metrics_url, timeout=60, expect_status=200, process=process
        )
        processes.wait_for_http(
            f"{webhook_url}/healthz",
            timeout=30,
            ssl_context=insecure_context(),
            process=process,
        )
        yield operator
    finally:
        for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
            plane.kubectl("delete", kind, "imageward", "--ignore-not-found", check=False)
        process.stop()


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 2000 samples is the 1980th smallest)."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def describe_ms(samples: Sequence[float]) -> str:
    return (
        f"p50 {percentile(samples, 0.50) * 1000:.2f} ms, p99 {percentile(samples, 0.99) * 1000:.2f}"
        f" ms, mean {statistics.fmean(samples) * 1000:.2f} ms, max {max(samples) * 1000:.1f} ms"
    )


def wait_until(what: str, probe: Any, *, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")
