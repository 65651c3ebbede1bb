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
import functools
import json
import os
import pathlib
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator
from types import FrameType
from typing import Any

import yaml

from imageward.localcluster import (
    controlplane,
    cosign,
    faultproxy,
    images,
    nodeagent,
    operatorimage,
    processes,
    realnode,
    registries,
    tools,
)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
READY_LINE = "imageward dev is ready"
NAMESPACE = "imageward-system"
#: The demo images signed with the demo key (shop/api stays unsigned).
SIGNED = ("shop/web:1.0", "shop/cart:1.0")
OPERATOR_REPOSITORY = "imageward/operator"
#: Sample policies dev leaves out, and why: they need keys of the user's own (a scanner's,
#: a build's) and attestations made with them; applied as they are, they are not usable
#: and so refuse every image of the registry, the signed ones too.
UNAPPLIED_POLICIES = {
    "no-critical-cves.yaml": "needs a scanner key and signed scan reports",
    "sbom-required.yaml": "needs your build key and signed SBOMs",
}


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
    registry: registries.Registry,
    state_dir: pathlib.Path,
    *,
    runnable: bool = False,
    operator_image: operatorimage.BuiltImage | None = None,
) -> tuple[dict[str, str], str | None]:
    """Push the demo images; sign the web tier's (shop/web, shop/cart) with real cosign
    when it is available, and leave shop/api unsigned (signed-only refuses it).

    `operator_image` (with --real-node) is pushed and signed too: the node agent's image
    and the pre-pull pods' helper image, which signed-only checks like any other."""
    client = registry.client()
    web, api, cart = images.shared_base_images(3)
    if runnable:
        pause = tools.find("imageward-pause").read_bytes()
        web, api, cart = (_runnable(image, pause) for image in (web, api, cart))
    demo = {
        "shop/web:1.0": web,
        "shop/api:1.0": api,
        "shop/cart:1.0": cart,
        "demo/root:1.0": images.root_image("root"),
        "demo/big:1.0": images.large_image("big", size=24 * 1024 * 1024),
        "demo/multiarch:1.0": images.multiarch_index("multiarch"),
    }
    pushed: dict[str, str] = {}
    for name, manifest in demo.items():
        repository, tag = name.split(":")
        result = client.push(repository, manifest, tag=tag)
        pushed[f"{registry.host}/{name}"] = result.digest
    to_sign = [f"{registry.host}/{name}" for name in SIGNED]
    if operator_image is not None:
        result = operatorimage.push(operator_image, registry, repository=OPERATOR_REPOSITORY)
        pushed[result.ref] = result.digest
        to_sign.append(result.ref)
    public_key = None
    try:
        signer = cosign.Cosign(state_dir / "cosign")
        keys = signer.generate_key_pair("demo")
        for reference in to_sign:
            signer.sign(f"{reference.rsplit(':', 1)[0]}@{pushed[reference]}", keys)
        public_key = keys.public_pem
    except (tools.ToolMissingError, cosign.CosignError) as e:
        _say(f"  (demo images not signed: {e})")
    return pushed, public_key


def _start_operator(
    plane: controlplane.ControlPlane,
    registry: registries.Registry,
    state_dir: pathlib.Path,
    *,
    extra_env: dict[str, str] | None = None,
) -> tuple[processes.ManagedProcess, int]:
    """`imageward run`; `extra_env` for a real node: the pre-pull pods' helper and pause
    images (IMAGEWARD_HELPER_IMAGE, IMAGEWARD_PAUSE_IMAGE), which it must be able to pull
    (kwok nodes pull nothing), and where the chart's agent pods are."""
    metrics_port = processes.free_port()
    env = dict(
        os.environ,
        KUBECONFIG=str(plane.kubeconfig),
        IMAGEWARD_INSECURE_REGISTRIES=registry.host,
        IMAGEWARD_METRICS_PORT=str(metrics_port),
        IMAGEWARD_WEBHOOK_HOST="127.0.0.1",
        IMAGEWARD_WEBHOOK_PORT=str(processes.free_port()),
        IMAGEWARD_NAMESPACE=NAMESPACE,
        **(extra_env or {}),
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


def _apply_directory(
    plane: controlplane.ControlPlane,
    directory: pathlib.Path,
    *,
    registry: str | None = None,
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    skip: Collection[str] = (),
) -> list[str]:
    """Apply every YAML file but those named in `skip`; examples name kind's registry
    `localhost:5001`, replaced. `transform` may change each object before it is applied."""
    if not directory.is_dir():
        return []
    files = sorted(p for p in directory.glob("*.yaml") if p.name not in skip)
    for path in files:
        text = path.read_text()
        if registry:
            text = text.replace("localhost:5001", registry)
        if transform is not None:
            documents = [transform(d) for d in yaml.safe_load_all(text) if d]
            text = yaml.safe_dump_all(documents)
        plane.kubectl("apply", "--server-side", "-f", "-", input=text)
    return [path.name for path in files]


def build_real_node_prepull(
    body: dict[str, Any], *, toleration: dict[str, str], node_selector: dict[str, str]
) -> dict[str, Any]:
    """A sample PrePull as `imageward dev --real-node` applies it: tolerating the real
    node's taint, so its pods (Images mode) run there too; a Layers-mode one is for the
    real node only (`node_selector`), the one node with a containerd, so with an agent."""
    if body.get("kind") != "PrePull":
        return body
    spec = dict(body.get("spec") or {})
    spec["tolerations"] = [*(spec.get("tolerations") or []), dict(toleration)]
    if spec.get("mode") == "Layers":
        spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), **node_selector}
    return {**body, "spec": spec}


def _render_agent(
    node: realnode.RealNode,
    registry: registries.Registry,
    mirror: faultproxy.FaultProxy,
    image: str,
    digest: str,
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The chart's agent objects for the real node, and what the operator needs to find
    its pods (`nodeagent.select_operator_env`)."""
    values = nodeagent.build_values(
        repository=image,
        digest=digest,
        containerd_socket=node.socket,
        node_selector=node.node_selector,
        tolerations=[node.toleration],
        insecure=[registry.host, mirror.host],
        mirrors={registry.host: mirror.host},
    )
    manifests = nodeagent.render_chart(values, namespace=NAMESPACE)
    return nodeagent.select_agent_objects(manifests), nodeagent.select_operator_env(manifests)


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
        operator_image: operatorimage.BuiltImage | None = None
        if node is not None:
            # What runs on the real node for pre-pulls: the node agent and the pre-pull
            # pods' helper are the operator image (`make image`; cached, else built now).
            try:
                operator_image = operatorimage.ensure_built()
            except (operatorimage.OperatorImageError, tools.ToolMissingError) as e:
                _say(f"  (no operator image, so no pre-pull on {node.name}: {e})")
        pushed, public_key = _push_demo_images(
            registry, state, runnable=real_node, operator_image=operator_image
        )

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
        operator_env: dict[str, str] = {}
        agent_objects: list[dict[str, Any]] = []
        if node is not None and operator_image is not None:
            repository = f"{registry.host}/{OPERATOR_REPOSITORY}"
            operator_env = {
                "IMAGEWARD_HELPER_IMAGE": f"{repository}@{operator_image.digest}",
                "IMAGEWARD_PAUSE_IMAGE": node.pause_image,
            }
            # Pods cannot reach 127.0.0.1: the agent reaches the registry through a mirror
            # on the node's address, as a cluster reaches one through a pull-through cache.
            mirror = stack.enter_context(faultproxy.FaultProxy(registry.url, bind=node.node_ip))
            agent_objects, agent_env = _render_agent(
                node, registry, mirror, repository, operator_image.digest
            )
            operator_env.update(agent_env)
        operator, metrics_port = _start_operator(plane, registry, state, extra_env=operator_env)
        stack.callback(operator.stop)
        _say(f"  operator       metrics http://127.0.0.1:{metrics_port}/metrics")
        agent_pod = None
        if node is not None and agent_objects:
            nodeagent.apply(plane, agent_objects)
            agent_pod = nodeagent.wait_ready(
                plane, nodeagent.find_daemonset(agent_objects), node=node.name
            )
            _say(f"  node agent     pod {NAMESPACE}/{agent_pod} on {node.name} (the chart's)")
        samples = _apply_directory(
            plane,
            REPO_ROOT / "examples" / "policies",
            registry=registry.host,
            skip=UNAPPLIED_POLICIES,
        ) + _apply_directory(
            plane,
            REPO_ROOT / "examples" / "prepulls",
            registry=registry.host,
            transform=(
                functools.partial(
                    build_real_node_prepull,
                    toleration=node.toleration,
                    node_selector=node.node_selector,
                )
                if node is not None
                else None
            ),
        )

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
        _say(
            "  kubectl -n shop get prepulls -w   # web-tier: the signed web tier pre-pulled "
            "on every node (READY n/n)"
        )
        if agent_pod is not None and node is not None:
            _say(
                "  # shared-layers: the node agent puts the shared layers into the real node's "
                f"containerd: ctr --address {node.socket} -n k8s.io content ls"
            )
        else:
            _say(
                "  # shared-layers (Layers mode) needs the node agent, which needs a real node: "
                "AgentNotRunning here (try --real-node)"
            )
        for image, digest in pushed.items():
            _say(f"  image {image}  ({digest[:19]}…)")
        if public_key:
            signed = ", ".join(SIGNED)
            _say(f"  {signed} are signed; the public key: {state / 'cosign' / 'demo.pub'}")
        if samples:
            _say(f"  samples applied: {', '.join(samples)}")
        for name, why in UNAPPLIED_POLICIES.items():
            _say(f"  not applied: examples/policies/{name} ({why})")
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
