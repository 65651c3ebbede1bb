"""`imageward dev`: the embedded local setup on a fresh machine.

Starts the real control plane (etcd, kube-apiserver & co., kwok nodes), a local registry
with demo images (one of them signed with real cosign when it is built), the CRDs, the
operator and the sample policies; prints what to try; stops everything on Ctrl-C.

With `--real-node`, one real kubelet node joins beside the kwok ones (`realnode`), so real
pods start; it changes kernel settings, iptables, mounts and cgroups of this machine while
it runs (restored on stop) and needs root, which is why it is not the default.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType

from imageward.localcluster import (
    controlplane,
    cosign,
    images,
    processes,
    realnode,
    registries,
    tools,
)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
READY_LINE = "imageward dev is ready"


def _default_state_dir() -> pathlib.Path:
    return pathlib.Path(
        os.environ.get("IMAGEWARD_DEV_DIR") or pathlib.Path.home() / ".imageward" / "dev"
    )


def _say(text: str = "") -> None:
    print(text, flush=True)


@contextlib.contextmanager
def _stop_signals() -> Iterator[threading.Event]:
    """An Event set by SIGINT or SIGTERM, with the previous handlers restored afterwards."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _runnable(image: images.Manifest, pause: bytes) -> images.Manifest:
    """`image` with the static pause binary on top as its entrypoint: it runs on a real
    node (the demo layers are random bytes), doing nothing until the pod is deleted."""
    layer = images.layer_from_files({"pause": (pause, 0o755)})
    return images.build_image(
        [*image.layers, layer],
        user=images.NONROOT_USER,
        entrypoint=["/pause"],
        labels=json.loads(image.config.data)["config"]["Labels"] if image.config else None,
    )


def _push_demo_images(
    registry: registries.Registry, state_dir: pathlib.Path, *, runnable: bool = False
) -> tuple[dict[str, str], str | None]:
    """Push the demo images; sign one with real cosign when it is available."""
    client = registry.client()
    web, api, _ = images.shared_base_images(3)
    if runnable:
        pause = tools.find("imageward-pause").read_bytes()
        web, api = _runnable(web, pause), _runnable(api, pause)
    demo = {
        "shop/web:1.0": web,
        "shop/api:1.0": api,
        "demo/root:1.0": images.root_image("root"),
        "demo/big:1.0": images.large_image("big", size=24 * 1024 * 1024),
        "demo/multiarch:1.0": images.multiarch_index("multiarch"),
    }
    pushed: dict[str, str] = {}
    for name, manifest in demo.items():
        repository, tag = name.split(":")
        result = client.push(repository, manifest, tag=tag)
        pushed[f"{registry.host}/{name}"] = result.digest
    public_key = None
    try:
        signer = cosign.Cosign(state_dir / "cosign")
        keys = signer.generate_key_pair("demo")
        signed = f"{registry.host}/shop/web"
        signer.sign(f"{signed}@{pushed[signed + ':1.0']}", keys)
        public_key = keys.public_pem
    except (tools.ToolMissingError, cosign.CosignError) as e:
        _say(f"  (demo image not signed: {e})")
    return pushed, public_key


def _start_operator(
    plane: controlplane.ControlPlane, registry: registries.Registry, state_dir: pathlib.Path
) -> tuple[processes.ManagedProcess, int]:
    metrics_port = processes.free_port()
    env = dict(
        os.environ,
        KUBECONFIG=str(plane.kubeconfig),
        IMAGEWARD_INSECURE_REGISTRIES=registry.host,
        IMAGEWARD_METRICS_PORT=str(metrics_port),
        IMAGEWARD_WEBHOOK_HOST="127.0.0.1",
        IMAGEWARD_WEBHOOK_PORT=str(processes.free_port()),
        IMAGEWARD_NAMESPACE="imageward-system",
    )
    operator = processes.ManagedProcess(
        "operator",
        [sys.executable, "-m", "imageward", "run", "--standalone"],
        log_dir=state_dir / "logs",
        env=env,
    )
    operator.start()
    processes.wait_for_http(
        f"http://127.0.0.1:{metrics_port}/metrics", timeout=60, expect_status=200, process=operator
    )
    return operator, metrics_port


#: Sample policies the demo leaves out: they need key material dev does not make (a
#: scanner's key, an SBOM build key), and unusable they would refuse every demo image.
#: `tests/cluster/test_examples.py` applies them with their keys.
_NOT_IN_DEV = frozenset({"no-critical-cves.yaml", "sbom-required.yaml"})


def _apply_directory(
    plane: controlplane.ControlPlane, directory: pathlib.Path, *, registry: str | None = None
) -> list[str]:
    """Apply the YAML files (but _NOT_IN_DEV); examples name kind's registry
    `localhost:5001`, replaced."""
    if not directory.is_dir():
        return []
    files = sorted(p for p in directory.glob("*.yaml") if p.name not in _NOT_IN_DEV)
    for path in files:
        text = path.read_text()
        if registry:
            text = text.replace("localhost:5001", registry)
        plane.kubectl("apply", "--server-side", "-f", "-", input=text)
    return [path.name for path in files]


def run(*, nodes: int, state_dir: str | None, real_node: bool = False) -> int:
    state = pathlib.Path(state_dir) if state_dir else _default_state_dir()
    advertise = None
    if real_node:
        if os.geteuid() != 0:
            _say("--real-node needs root (kubelet, containerd, iptables)")
            return 2
        advertise = controlplane.primary_address()
        if advertise is None:
            _say("--real-node needs an address besides 127.0.0.1 that pods can reach")
            return 2
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    started = time.monotonic()
    with _stop_signals() as stop, contextlib.ExitStack() as stack:
        real = " and one real node" if real_node else ""
        _say(f"Starting the local control plane with {nodes} kwok node(s){real}...")
        plane = stack.enter_context(
            controlplane.ControlPlane(
                nodes=nodes, workdir=state / "cluster", advertise_address=advertise
            )
        )
        kubeconfig = state / "kubeconfig"
        shutil.copy(plane.kubeconfig, kubeconfig)
        _say(f"  kube-apiserver {plane.server}")

        registry = stack.enter_context(registries.start_anonymous(workdir=state / "registry"))
        _say(f"  registry       http://{registry.host}")
        node: realnode.RealNode | None = None
        if real_node:
            node = realnode.RealNode(plane, log_dir=state / "real-node")
            node.add_registry(registry.host)
            # Entered before the operator: on Ctrl-C it stops after it, before the registry
            # and the control plane, which its stop still needs.
            stack.enter_context(node)
            _say(f"  real node      {node.name} ({node.node_ip}), logs {node.log_dir}")
        pushed, public_key = _push_demo_images(registry, state, runnable=real_node)

        # imageward's CRDs, and the PolicyReport CRDs the chart installs when absent.
        for directory in (REPO_ROOT / "crds", REPO_ROOT / "charts/imageward/policyreport-crds"):
            for crd in _apply_directory(plane, directory):
                plane.kubectl("wait", "--for=condition=Established", "-f", str(directory / crd))
        plane.create_namespace("imageward-system")
        plane.create_namespace("shop")
        # The production-namespace sample policy pins tags in namespaces labelled so.
        plane.create_namespace("production", labels={"env": "production"})
        if public_key:
            plane.kubectl(
                "create",
                "secret",
                "generic",
                "release-key",
                "-n",
                "imageward-system",
                f"--from-file=cosign.pub={state / 'cosign' / 'demo.pub'}",
            )
        operator, metrics_port = _start_operator(plane, registry, state)
        stack.callback(operator.stop)
        _say(f"  operator       metrics http://127.0.0.1:{metrics_port}/metrics")
        samples = _apply_directory(
            plane, REPO_ROOT / "examples" / "policies", registry=registry.host
        ) + _apply_directory(plane, REPO_ROOT / "examples" / "prepulls", registry=registry.host)

        _say()
        _say(f"{READY_LINE} ({time.monotonic() - started:.1f}s). In another shell:")
        _say(f"  export KUBECONFIG={kubeconfig}")
        _say("  kubectl get nodes")
        _say("  kubectl get imagepolicies,prepulls -A")
        _say("  kubectl get policyreports -A   # what runs now against today's policies")
        tries = (
            ("shop", "web", "shop/web:1.0", "signed: admitted"),
            (
                "production",
                "web",
                "shop/web:1.0",
                "env=production: admitted, tag pinned to its digest",
            ),
            ("shop", "api", "shop/api:1.0", "unsigned: refused by signed-only"),
            ("shop", "big", "demo/big:1.0", "refused, with a size-limits warning"),
        )
        for namespace, pod, image, outcome in tries:
            _say(
                f"  kubectl -n {namespace} run {pod} --image={registry.host}/{image}   # {outcome}"
            )
        if node is not None:
            overrides = json.dumps({"spec": node.placement}, separators=(",", ":"))
            _say(
                f"  kubectl -n shop run real --image={registry.host}/shop/web:1.0 "
                f"--overrides='{overrides}'   # a real pod on {node.name}"
            )
            _say("  kubectl -n shop get pods -o wide -w   # watch it start")
        for image, digest in pushed.items():
            _say(f"  image {image}  ({digest[:19]}…)")
        if public_key:
            _say(f"  shop/web:1.0 is signed; its public key: {state / 'cosign' / 'demo.pub'}")
        if samples:
            _say(f"  sample policies applied: {', '.join(samples)}")
        _say(f"  logs: {state / 'logs'} and {state / 'cluster' / 'logs'}")
        _say("Press Ctrl-C to stop everything.")
        while not stop.wait(0.5):
            if not operator.alive:
                _say(f"the operator exited ({operator.returncode}); log tail:")
                _say(operator.log_tail())
                return 1
        _say("Stopping...")
    _say("Stopped.")
    return 0
