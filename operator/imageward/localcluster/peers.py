"""Kyverno and sigstore policy-controller as admission webhooks of the local apiserver.

The benchmark (`bench/peers_bench.py`) measures imageward next to them on the same
control plane, registry and images. Each peer runs as its own release would set it up,
with what a local apiserver without cluster DNS needs instead of a Service:

- **Kyverno** (admission controller, `cmd/kyverno`): its CRDs, the ConfigMaps and the
  container arguments and environment its Helm chart renders, plus Kyverno's own
  out-of-cluster switch `--serverIP=127.0.0.1:PORT`, with which it issues its
  certificates for that address and writes `url:` client configs into the webhook
  configurations it manages itself.
- **policy-controller** (`cmd/webhook`, knative based): its CRDs, ConfigMaps and the
  `webhook-certs` Secret of its `config/`; the Secret is filled in advance with a
  certificate for the Service names knative would use plus 127.0.0.1 (knative keeps a
  complete, unexpired Secret), and the four webhook configurations are written here with
  the rules, selectors and paths knative's reconcilers set, but a `url:` (those
  reconcilers only handle `service:` references and log that they skip the others).
  The CRD conversion webhook gets the same `url:` treatment.

`hack/build-peers.sh` (`make peer-tools`) builds the binaries into the tool cache and
puts each peer's manifests (CRDs, chart output, config) in a kit directory next to them,
`<cache>/peers/<name>-<version>`; nothing of the peers is part of this repository.
Both run with the admin identity of the local control plane (their RBAC is not what is
measured). Processes can be pinned to one CPU (`cpu=`), as the benchmark pins each
controller in turn.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import os
import pathlib
import shutil
import socket
import ssl
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

from imageward.admission import pki
from imageward.localcluster import controlplane, processes, tools

Manifest = dict[str, Any]

KYVERNO = "kyverno"
POLICY_CONTROLLER = "policy-controller"
KYVERNO_NAMESPACE = "kyverno"
POLICY_NAMESPACE = "cosign-system"
#: policy-controller only checks namespaces that opt in with this label.
POLICY_INCLUDE_LABEL = "policy.sigstore.dev/include"
KYVERNO_WEBHOOK_LABEL = "webhook.kyverno.io/managed-by"
POLICY_WEBHOOK_NAME = "policy.sigstore.dev"
POLICY_CIP_DEFAULTING = "defaulting.clusterimagepolicy.sigstore.dev"
POLICY_CIP_VALIDATING = "validating.clusterimagepolicy.sigstore.dev"
#: knative adds this to every webhook's namespaceSelector.
KNATIVE_EXCLUDE_LABEL = "webhooks.knative.dev/exclude"
#: The Secret keys knative's certificate controller reads and writes.
KNATIVE_CERT_KEYS = ("ca-cert.pem", "server-cert.pem", "server-key.pem")
POLICY_WEBHOOK_PORT = 8443


class PeerError(RuntimeError):
    """A peer did not come up; the message names it and the tail of its log."""


def kit_dir(name: str) -> pathlib.Path:
    """`<cache>/peers/<name>`: a link to the kit of the version `make peer-tools` built."""
    return tools.cache_dir() / "peers" / name


def kit_version(name: str) -> str:
    path = kit_dir(name) / "version"
    if not path.exists():
        raise tools.ToolMissingError(f"{name} kit", [str(kit_dir(name))])
    return path.read_text().strip()


def load_documents(paths: Iterable[pathlib.Path]) -> list[Manifest]:
    documents: list[Manifest] = []
    for path in paths:
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict) and document.get("kind"):
                documents.append(document)
    return documents


def find_all(documents: Iterable[Manifest], kind: str) -> list[Manifest]:
    return [d for d in documents if d.get("kind") == kind]


def find(documents: Iterable[Manifest], kind: str, name: str) -> Manifest:
    for document in documents:
        if document.get("kind") == kind and document["metadata"]["name"] == name:
            return document
    raise KeyError(f"no {kind} {name}")


# -- Kyverno ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class KyvernoCommand:
    argv: list[str]
    env: dict[str, str]


def override_flags(args: Sequence[str], overrides: Mapping[str, str]) -> list[str]:
    """`args` (`--name=value` flags) with each flag of `overrides` set to its value:
    replaced where present, appended otherwise (in the order of `overrides`)."""
    result: list[str] = []
    seen: set[str] = set()
    for arg in args:
        name = arg.split("=", 1)[0].lstrip("-")
        if name in overrides:
            if name not in seen:
                result.append(f"--{name}={overrides[name]}")
                seen.add(name)
            continue
        result.append(arg)
    result += [f"--{name}={value}" for name, value in overrides.items() if name not in seen]
    return result


def resolve_env(
    env: Sequence[Mapping[str, Any]], *, namespace: str, pod_name: str
) -> dict[str, str]:
    """A container's `env:` as a process environment: literal values, and the two
    downward-API fields a controller reads about itself."""
    fields = {"metadata.namespace": namespace, "metadata.name": pod_name}
    resolved: dict[str, str] = {}
    for item in env:
        if "value" in item:
            resolved[item["name"]] = str(item["value"])
            continue
        path = item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if path in fields:
            resolved[item["name"]] = fields[path]
    return resolved


def build_kyverno_command(
    chart: Sequence[Manifest],
    *,
    binary: str,
    kubeconfig: pathlib.Path,
    port: int,
    metrics_port: int,
    runtime_metrics_port: int,
    home: pathlib.Path,
    pod_name: str = "kyverno-admission-controller-local",
) -> KyvernoCommand:
    """The admission controller's command line and environment as the chart's Deployment
    sets them, run out of cluster: `--serverIP` makes Kyverno write `url:` client
    configs (`https://127.0.0.1:PORT/...`) and put the IP in its serving certificate."""
    deployment = find(chart, "Deployment", "kyverno-admission-controller")
    container = next(
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "kyverno"
    )
    argv = override_flags(
        container.get("args", []),
        {
            "kubeconfig": str(kubeconfig),
            "serverIP": f"127.0.0.1:{port}",
            "webhookServerHost": "127.0.0.1",
            "webhookServerPort": str(port),
            "metricsPort": str(metrics_port),
            "controllerRuntimeMetricsAddress": f"127.0.0.1:{runtime_metrics_port}",
        },
    )
    env = resolve_env(container.get("env", []), namespace=KYVERNO_NAMESPACE, pod_name=pod_name)
    env.update(TUF_ROOT=str(home / ".sigstore"), HOME=str(home))
    return KyvernoCommand([binary, *argv], env)


def kyverno_install_objects(chart: Sequence[Manifest]) -> list[Manifest]:
    """What of the chart the local admission controller needs besides its CRDs: its
    ConfigMaps (resource filters, webhook namespace selector, metrics)."""
    return [copy.deepcopy(d) for d in find_all(chart, "ConfigMap")]


# -- policy-controller --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Kind:
    group: str
    version: str
    plural: str
    subresources: tuple[str, ...] = ("",)  # "" = the resource itself
    verbs: tuple[str, ...] = ("CREATE", "UPDATE")


# cmd/webhook/main.go `types`: what the pod webhooks see (SubResourceLimited, VerbLimited).
_POD_KINDS = (
    _Kind("", "v1", "pods", ("/ephemeralcontainers", "")),
    _Kind("apps", "v1", "replicasets"),
    _Kind("apps", "v1", "deployments"),
    _Kind("apps", "v1", "statefulsets"),
    _Kind("apps", "v1", "daemonsets"),
    _Kind("batch", "v1", "jobs"),
    _Kind("batch", "v1", "cronjobs"),
    _Kind("batch", "v1beta1", "cronjobs"),
)
# `typesCIP`: no limits, so knative's defaults (the resource and its status; C/U/D).
_CIP_KINDS = (
    _Kind("policy.sigstore.dev", "v1alpha1", "clusterimagepolicies", ("", "/status")),
    _Kind("policy.sigstore.dev", "v1alpha1", "trustroots", ("", "/status")),
    _Kind("policy.sigstore.dev", "v1beta1", "clusterimagepolicies", ("", "/status")),
)


def _sorted_rules(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # knative sorts by group, version, first resource.
    return sorted(rules, key=lambda r: (r["apiGroups"][0], r["apiVersions"][0], r["resources"][0]))


def knative_validating_rules(kinds: Sequence[_Kind], *, delete: bool) -> list[dict[str, Any]]:
    rules = []
    for kind in kinds:
        verbs = list(kind.verbs) + (["DELETE"] if delete else [])
        rules.append(
            {
                "apiGroups": [kind.group],
                "apiVersions": [kind.version],
                "operations": verbs,
                "resources": [kind.plural + sub for sub in kind.subresources],
            }
        )
    return _sorted_rules(rules)


def knative_mutating_rules(kinds: Sequence[_Kind]) -> list[dict[str, Any]]:
    # The defaulting reconciler ignores the limits: CREATE/UPDATE, resource and status.
    seen: dict[tuple[str, str, str], dict[str, Any]] = {}
    for kind in kinds:
        seen[(kind.group, kind.version, kind.plural)] = {
            "apiGroups": [kind.group],
            "apiVersions": [kind.version],
            "operations": ["CREATE", "UPDATE"],
            "resources": [kind.plural, kind.plural + "/status"],
        }
    return _sorted_rules(list(seen.values()))


def _knative_selector(expressions: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    return {
        "matchExpressions": [
            *(dict(e) for e in expressions),
            {"key": KNATIVE_EXCLUDE_LABEL, "operator": "DoesNotExist"},
        ]
    }


def build_policy_controller_webhooks(base_url: str, ca_pem: bytes) -> list[Manifest]:
    """The four webhook configurations of policy-controller's `config/500-*` and
    `config/501-*`, completed as knative's reconcilers complete them (rules, selectors,
    paths, reinvocation), with a `url:` under `base_url` instead of the Service."""
    ca = base64.b64encode(ca_pem).decode()
    include = [{"key": POLICY_INCLUDE_LABEL, "operator": "In", "values": ["true"]}]

    def client(path: str) -> dict[str, Any]:
        return {"url": f"{base_url.rstrip('/')}{path}", "caBundle": ca}

    def configuration(kind: str, name: str, webhook: dict[str, Any]) -> Manifest:
        return {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": kind,
            "metadata": {"name": name},
            "webhooks": [{"name": name, "admissionReviewVersions": ["v1"], **webhook}],
        }

    pods_common = {
        "namespaceSelector": _knative_selector(include),
        "failurePolicy": "Fail",
        "sideEffects": "None",
        "timeoutSeconds": 25,
    }
    cip_common = {
        "namespaceSelector": _knative_selector(),
        "failurePolicy": "Fail",
        "sideEffects": "None",
        "matchPolicy": "Equivalent",
    }
    return [
        configuration(
            "ValidatingWebhookConfiguration",
            POLICY_WEBHOOK_NAME,
            {
                **pods_common,
                "clientConfig": client("/validations"),
                "rules": knative_validating_rules(_POD_KINDS, delete=False),
            },
        ),
        configuration(
            "MutatingWebhookConfiguration",
            POLICY_WEBHOOK_NAME,
            {
                **pods_common,
                "clientConfig": client("/mutations"),
                "rules": knative_mutating_rules(_POD_KINDS),
                "reinvocationPolicy": "IfNeeded",
            },
        ),
        configuration(
            "MutatingWebhookConfiguration",
            POLICY_CIP_DEFAULTING,
            {
                **cip_common,
                "clientConfig": client("/defaulting"),
                "rules": knative_mutating_rules(_CIP_KINDS),
                "reinvocationPolicy": "IfNeeded",
            },
        ),
        configuration(
            "ValidatingWebhookConfiguration",
            POLICY_CIP_VALIDATING,
            {
                **cip_common,
                "clientConfig": client("/validating"),
                "rules": knative_validating_rules(_CIP_KINDS, delete=True),
            },
        ),
    ]


def with_conversion_url(crd: Manifest, url: str, ca_pem: bytes) -> Manifest:
    """A CRD whose conversion webhook (a Service in the release) is called at `url`."""
    patched = copy.deepcopy(crd)
    conversion = patched.get("spec", {}).get("conversion")
    if conversion and conversion.get("strategy") == "Webhook":
        webhook = conversion.setdefault("webhook", {})
        webhook["clientConfig"] = {"url": url, "caBundle": base64.b64encode(ca_pem).decode()}
    return patched


def build_knative_cert_secret(
    ca: pki.CertificateAuthority, *, service: str, namespace: str, secret: str
) -> Manifest:
    """`webhook-certs` as knative's certificate controller fills it (CA, serving key and
    certificate for the Service's names), the certificate also valid for 127.0.0.1."""
    names = [service, f"{service}.{namespace}", f"{service}.{namespace}.svc"]
    names.append(f"{service}.{namespace}.svc.cluster.local")
    pair = ca.issue(names[2], dns_names=names, ip_addresses=["127.0.0.1"], server=True)
    data = dict(zip(KNATIVE_CERT_KEYS, (ca.cert_pem, pair.cert_pem, pair.key_pem), strict=True))
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": secret, "namespace": namespace},
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


def policy_controller_install_objects(config: Sequence[Manifest]) -> list[Manifest]:
    """What of `config/` the local webhook needs besides CRDs, Secret and webhooks: its
    ConfigMaps (logging, observability, leader election, policies, keys)."""
    return [
        copy.deepcopy(d)
        for d in find_all(config, "ConfigMap")
        if d["metadata"].get("namespace") == POLICY_NAMESPACE
    ]


# -- processes ----------------------------------------------------------------------------


class Controller:
    """A running admission controller process: its pid, CPU time and memory."""

    name = "controller"

    def __init__(self) -> None:
        self.process: processes.ManagedProcess | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None and self.process.pid is not None
        return self.process.pid

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def peak_rss(self) -> int:
        return process_peak_rss(self.pid)

    def log_tail(self, max_bytes: int = 4000) -> str:
        return self.process.log_tail(max_bytes) if self.process is not None else ""


def process_tree(pid: int) -> list[int]:
    """`pid` and every live process below it (imageward's admission process is its
    operator's child; a peer's controller is one process)."""
    parents: dict[int, list[int]] = {}
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        parents.setdefault(parent, []).append(int(entry.name))
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        pending.extend(parents.get(current, ()))
    return found


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and its live descendants so far (/proc/PID/stat
    fields 14 and 15)."""
    ticks = 0
    for member in process_tree(pid):
        try:
            fields = pathlib.Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def process_memory(pid: int) -> tuple[int, int]:
    """(resident, peak resident) bytes of `pid` and its live descendants (VmRSS, VmHWM
    summed: the peaks of two processes need not coincide, so the second is an upper
    bound)."""
    rss = peak = 0
    for member in process_tree(pid):
        try:
            lines = pathlib.Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                peak += int(line.split()[1]) * 1024
    return rss, peak


def process_peak_rss(pid: int) -> int:
    """Peak resident set size of `pid` and its descendants in bytes (`process_memory`)."""
    return process_memory(pid)[1]


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def pinned(argv: Sequence[str], cpu: int | None) -> list[str]:
    taskset = shutil.which("taskset")
    if cpu is None or not taskset:
        return list(argv)
    return [taskset, "-c", str(cpu), *argv]


def _wait_https(url: str, process: processes.ManagedProcess, *, timeout: float) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    processes.wait_for_http(
        url, timeout=timeout, expect_status=range(200, 500), ssl_context=context, process=process
    )


class Kyverno(Controller):
    """Kyverno's admission controller, installed and started; `stop()` undoes both."""

    name = KYVERNO

    def __init__(
        self, plane: controlplane.ControlPlane, workdir: pathlib.Path, *, cpu: int | None = None
    ) -> None:
        super().__init__()
        self.plane = plane
        self.workdir = workdir
        self.cpu = cpu
        self.kit = kit_dir(KYVERNO)
        self.version = kit_version(KYVERNO)
        self.port = 0

    def __enter__(self) -> Kyverno:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, *, timeout: float = 180.0) -> None:
        chart = load_documents([self.kit / "chart.yaml"])
        crds = load_documents(sorted((self.kit / "crds").glob("*.yaml")))
        apply_crds(self.plane, crds)
        self.plane.create_namespace(KYVERNO_NAMESPACE)
        self.plane.apply(*kyverno_install_objects(chart))
        self.port = processes.free_port()
        home = self.workdir / "kyverno-home"
        home.mkdir(parents=True, exist_ok=True)
        command = build_kyverno_command(
            chart,
            binary=str(tools.find("kyverno")),
            kubeconfig=self.plane.kubeconfig,
            port=self.port,
            metrics_port=processes.free_port(),
            runtime_metrics_port=processes.free_port(),
            home=home,
        )
        self.process = processes.ManagedProcess(
            f"kyverno-{self.port}",
            pinned(command.argv, self.cpu),
            log_dir=self.workdir,
            env={"PATH": os.environ.get("PATH", ""), **command.env},
            grace=15.0,
        )
        self.process.start()
        try:
            _wait_https(
                f"https://127.0.0.1:{self.port}/health/readiness", self.process, timeout=timeout
            )
            self.plane.wait_for(
                "Kyverno's resource webhook configurations",
                lambda: self._webhooks_present(),
                timeout=timeout,
            )
        except Exception as e:
            raise PeerError(f"Kyverno did not come up: {e}\n{self.log_tail()}") from e

    def _webhooks_present(self) -> bool:
        names = self.plane.kubectl(
            "get",
            "validatingwebhookconfiguration,mutatingwebhookconfiguration",
            "-l",
            f"{KYVERNO_WEBHOOK_LABEL}=kyverno",
            "-o",
            "name",
            check=False,
        ).stdout
        return "kyverno-resource-validating-webhook-cfg" in names and (
            "kyverno-resource-mutating-webhook-cfg" in names
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
            self.plane.kubectl(
                "delete",
                kind,
                "-l",
                f"{KYVERNO_WEBHOOK_LABEL}=kyverno",
                "--wait=false",
                check=False,
            )


class PolicyController(Controller):
    """sigstore policy-controller's webhook, installed and started; `stop()` undoes both."""

    name = POLICY_CONTROLLER

    def __init__(
        self, plane: controlplane.ControlPlane, workdir: pathlib.Path, *, cpu: int | None = None
    ) -> None:
        super().__init__()
        self.plane = plane
        self.workdir = workdir
        self.cpu = cpu
        self.kit = kit_dir(POLICY_CONTROLLER)
        self.version = kit_version(POLICY_CONTROLLER)
        self.port = 0
        self._webhooks: list[Manifest] = []

    def __enter__(self) -> PolicyController:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, *, timeout: float = 120.0) -> None:
        config = load_documents(sorted((self.kit / "config").glob("*.yaml")))
        # 0.15.1 ignores --secure-port: main() puts a copy of its webhook options in the
        # context before parsing the flag, so the webhook always listens on :8443.
        self.port = POLICY_WEBHOOK_PORT
        if not _port_free(self.port):
            raise PeerError(f"policy-controller needs port {self.port}, which is taken")
        base = f"https://127.0.0.1:{self.port}"
        ca = pki.CertificateAuthority.create("policy-controller-webhook-ca")
        crds = [
            with_conversion_url(crd, f"{base}/resource-conversion", ca.cert_pem)
            for crd in find_all(config, "CustomResourceDefinition")
        ]
        self.plane.create_namespace(POLICY_NAMESPACE)
        apply_crds(self.plane, crds)
        self.plane.apply(
            *policy_controller_install_objects(config),
            build_knative_cert_secret(
                ca, service="webhook", namespace=POLICY_NAMESPACE, secret="webhook-certs"
            ),
        )
        self._webhooks = build_policy_controller_webhooks(base, ca.cert_pem)
        self.plane.apply(*self._webhooks)
        home = self.workdir / "policy-controller-home"
        home.mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(home),
            "KUBECONFIG": str(self.plane.kubeconfig),
            "SYSTEM_NAMESPACE": POLICY_NAMESPACE,
            "CONFIG_LOGGING_NAME": "config-logging",
            "CONFIG_OBSERVABILITY_NAME": "config-observability",
            "METRICS_DOMAIN": "sigstore.dev/policy",
            "WEBHOOK_NAME": "webhook",
            "KUBERNETES_MIN_VERSION": "1.21.0",
            "POD_NAME": "webhook-local",
            # knative's fixed ports (9090 metrics, 8008 profiling) may be taken here.
            "METRICS_PROMETHEUS_PORT": str(processes.free_port()),
            "PROFILING_PORT": str(processes.free_port()),
        }
        argv = [
            # main() parses its flags before knative registers --kubeconfig: the env, then.
            str(tools.find("policy-webhook")),
            f"--secure-port={self.port}",
            "--disable-tuf",  # no TUF mirror is reachable; key authorities need none
        ]
        self.process = processes.ManagedProcess(
            f"policy-controller-{self.port}",
            pinned(argv, self.cpu),
            log_dir=self.workdir,
            env=env,
            grace=15.0,
        )
        self.process.start()
        try:
            _wait_https(f"{base}/", self.process, timeout=timeout)
        except Exception as e:
            raise PeerError(f"policy-controller did not come up: {e}\n{self.log_tail()}") from e

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        for webhook in self._webhooks:
            self.plane.kubectl(
                "delete",
                webhook["kind"].lower(),
                webhook["metadata"]["name"],
                "--ignore-not-found",
                "--wait=false",
                check=False,
            )


def apply_crds(plane: controlplane.ControlPlane, crds: Sequence[Manifest]) -> None:
    """Apply CRDs server-side (Kyverno's are too large for the last-applied annotation)
    and wait until all are Established."""
    if not crds:
        return
    # As helm installs a chart's crds/: one that exists already is left as it is (the
    # PolicyReport CRDs, which imageward's chart installs too, serve the v1alpha2 that
    # Kyverno writes; replacing them would drop the version they store).
    existing = set(
        plane.kubectl("get", "crd", "-o", "name")
        .stdout.replace("customresourcedefinition.apiextensions.k8s.io/", "")
        .split()
    )
    crds = [crd for crd in crds if crd["metadata"]["name"] not in existing]
    if not crds:
        return
    plane.apply(*crds)
    deadline = time.monotonic() + 60
    for crd in crds:
        remaining = max(1, int(deadline - time.monotonic()))
        plane.kubectl(
            "wait",
            "--for=condition=Established",
            f"crd/{crd['metadata']['name']}",
            f"--timeout={remaining}s",
        )


# -- equivalent policies ------------------------------------------------------------------
#
# One rule set, three spellings: the images under `prefix` must carry a cosign signature
# by `public_pem` (legacy `.sig` or bundle, as `bundle` says: the peers read one format
# per policy, imageward both), are pinned to their digest, and with `max_size` their
# layers (the platform manifest's) must not add up to more than that.


def build_imagepolicy(
    name: str, prefix: str, public_pem: str, *, max_size: str | None = None
) -> Manifest:
    rules: dict[str, Any] = {
        "signatures": {"authorities": [{"name": "release", "key": {"pem": public_pem}}]}
    }
    if max_size is not None:
        rules["maxCompressedSize"] = max_size
    return {
        "apiVersion": "imageward.io/v1alpha1",
        "kind": "ImagePolicy",
        "metadata": {"name": name},
        "spec": {"match": {"images": [f"**/{prefix}/**"]}, "rules": rules, "pinDigest": True},
    }


def build_kyverno_policy(
    name: str, prefix: str, public_pem: str, *, bundle: bool = False, max_size: str | None = None
) -> Manifest:
    """A ClusterPolicy: `verifyImages` with the key (mutateDigest, verifyDigest), and with
    `max_size` the rule of Kyverno's sample `block-large-images` (an `imageRegistry`
    context summing `manifest.layers[*].size` per container)."""
    attestor: dict[str, Any] = {
        "keys": {
            "publicKeys": public_pem,
            # No transparency log or CT log is reachable offline; cosign signed without.
            "rekor": {"ignoreTlog": True},
            "ctlog": {"ignoreSCT": True},
        }
    }
    verify: dict[str, Any] = {
        "imageReferences": [f"*/{prefix}/*"],
        "failureAction": "Enforce",
        "mutateDigest": True,
        "verifyDigest": True,
        "required": True,
        "attestors": [{"entries": [attestor]}],
    }
    if bundle:
        verify["type"] = "SigstoreBundle"
    rules: list[dict[str, Any]] = [
        {
            "name": "verify-signature",
            "match": {"any": [{"resources": {"kinds": ["Pod"]}}]},
            "verifyImages": [verify],
        }
    ]
    if max_size is not None:
        rules.append(
            {
                "name": "block-large-images",
                "match": {"any": [{"resources": {"kinds": ["Pod"]}}]},
                "preconditions": {
                    "all": [
                        {
                            "key": "{{request.operation || 'BACKGROUND'}}",
                            "operator": "NotEquals",
                            "value": "DELETE",
                        }
                    ]
                },
                "validate": {
                    "failureAction": "Enforce",
                    "message": f"Images over {max_size} are not allowed.",
                    "foreach": [
                        {
                            "list": "request.object.spec.containers",
                            "context": [
                                {
                                    "name": "imageSize",
                                    "imageRegistry": {
                                        "reference": "{{ element.image }}",
                                        "jmesPath": "sum(manifest.layers[*].size)",
                                    },
                                }
                            ],
                            "deny": {
                                "conditions": {
                                    "all": [
                                        {
                                            "key": "{{imageSize}}",
                                            "operator": "GreaterThan",
                                            "value": max_size,
                                        }
                                    ]
                                }
                            },
                        }
                    ],
                },
            }
        )
    return {
        "apiVersion": "kyverno.io/v1",
        "kind": "ClusterPolicy",
        "metadata": {"name": name},
        "spec": {"background": False, "webhookTimeoutSeconds": 10, "rules": rules},
    }


def build_cluster_image_policy(name: str, prefix: str, public_pem: str) -> Manifest:
    """A ClusterImagePolicy with one key authority (legacy signatures: policy-controller
    reads bundles for keyless authorities only). Its mutating webhook pins digests."""
    return {
        "apiVersion": "policy.sigstore.dev/v1beta1",
        "kind": "ClusterImagePolicy",
        "metadata": {"name": name},
        "spec": {
            "images": [{"glob": f"**/{prefix}/**"}],
            "authorities": [
                {"name": "release", "key": {"data": public_pem, "hashAlgorithm": "sha256"}}
            ],
        },
    }
