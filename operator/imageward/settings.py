"""One settings object, built once at start-up and passed explicitly.

Grouped frozen dataclasses with documented defaults; `from_env("IMAGEWARD_")` reads
overrides from the environment through one table, so every error names its variable.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from imageward import errors


@dataclasses.dataclass(frozen=True, slots=True)
class RegistrySettings:
    insecure_registries: tuple[str, ...] = ()
    """Hosts (host[:port]) reached over plain HTTP, like containerd's `insecure` hosts."""

    ca_bundle: str | None = None
    """PEM file of extra CAs trusted for HTTPS registries (None: the system store)."""

    mirrors: tuple[tuple[str, str], ...] = ()
    """(registry, mirror) pairs: lookups try the mirror first, then the registry."""

    request_timeout: float = 5.0
    """Seconds for one HTTP request, headers and body; bounded again by each deadline."""

    lookup_deadline: float = 8.0
    """Seconds for a whole lookup (auth, redirects, retries) unless the caller passes one."""

    max_manifest_bytes: int = 1024 * 1024
    """Manifests and indexes larger than this are refused (real ones are a few KiB; a
    1,000-layer manifest is about 200 KiB)."""

    max_config_bytes: int = 2 * 1024 * 1024
    """Image config blobs larger than this are refused (forbidRootUser then refuses)."""

    retries: int = 2
    """Extra attempts after a 5xx or a connection error, inside the deadline."""

    facts_cache_size: int = 4096
    """Image facts kept, keyed by digest (immutable, so never stale)."""

    tag_cache_ttl: float = 30.0
    """Seconds a tag-to-digest resolution is trusted."""

    negative_cache_ttl: float = 5.0
    """Seconds a 'not found' is remembered, so a burst of bad pods costs one lookup."""

    signature_cache_ttl: float = 30.0
    """Seconds the signatures found for a digest are reused before asking again."""

    max_concurrency: int = 64
    """HTTP requests in flight to all registries at once."""


#: Where the webhook may be served (AdmissionSettings.process).
ADMISSION_PROCESSES = ("own", "shared")


@dataclasses.dataclass(frozen=True, slots=True)
class AdmissionSettings:
    host: str = "0.0.0.0"
    """Address the webhook server listens on."""

    port: int = 9443
    """HTTPS port of the webhook server."""

    webhook_timeout: int = 10
    """Seconds the apiserver waits for the webhook (timeoutSeconds, at most 30)."""

    deadline: float = 8.0
    """Seconds the handler allows itself; below webhook_timeout so it answers in time."""

    excluded_namespaces: tuple[str, ...] = ("kube-system",)
    """Namespaces never checked, besides the operator's own."""

    validating_configuration: str = "imageward"
    """ValidatingWebhookConfiguration whose caBundle the operator keeps current."""

    mutating_configuration: str = "imageward"
    """MutatingWebhookConfiguration (digest pinning) whose caBundle the operator keeps
    current; "" when there is none (the chart's `webhook.mutating.enabled: false`): the
    validating webhook then checks pinDigest policies without asking for their pins."""

    service: str | None = None
    """Service in front of the webhook (in-cluster); None: the apiserver calls `url`."""

    url: str | None = None
    """Base URL the apiserver calls when there is no Service (local clusters, tests)."""

    tls_secret: str | None = None
    """Secret (operator namespace) holding the CA and serving certificate replicas share;
    None keeps them in memory (one replica)."""

    cert_dir: str | None = None
    """Directory with tls.crt/tls.key/ca.crt made by someone else (cert-manager); the
    operator then only serves them and does not patch caBundle."""

    create_configurations: bool = True
    """Create missing webhook configurations (dev, tests); the chart renders its own."""

    failure_policy: str = "Fail"
    """failurePolicy of webhook configurations the operator creates."""

    tls_check_interval: float = 3600.0
    """Seconds between checks whether the serving certificate needs renewing."""

    process: str = "own"
    """Where the webhook is served: "own", a process of its own beside the operator's
    (`admission.worker`), so the controllers' work, their garbage collections and the
    GIL never hold a review up; "shared", the operator's event loop (one process less,
    about 105 MiB less resident memory, for small clusters and debugging)."""

    decision_cache_ttl: float = 1.0
    """Seconds a review's outcome is given again to reviews asking the same question (a
    rollout's pods): `admission.decisions`. Never longer than the tag, signature and
    "not found" TTLs allow (0 there switches it off too); 0 checks every review."""

    shutdown_drain: float = 0.0
    """Seconds the webhook server keeps answering once the operator is told to stop,
    each connection closed after its next answer: behind a Service the apiserver learns
    a moment later that the replica is gone, and reuses connections it holds to it
    (the chart sets 5). 0: stop at once (one local process, tests)."""


#: Plans one node agent serves, so conditions one agent pod carries, at most.
MAX_AGENT_PLANS = 256


@dataclasses.dataclass(frozen=True, slots=True)
class PrePullSettings:
    helper_image: str = "ghcr.io/imageward/imageward:0.1.0"
    """Image holding /imageward-helper, the static binary pre-pull init containers run."""

    pause_image: str = "registry.k8s.io/pause:3.10"
    """The long-lived container of pre-pull pods."""

    default_platform: str = "linux/amd64"
    """Platform planned for when a PrePull's nodeSelector does not name an architecture."""

    agent_enabled: bool = True
    """Whether the node-agent DaemonSet runs (chart value agent.enabled); without it a
    Layers-mode PrePull is refused with reason AgentDisabled instead of waiting."""

    agent_selector: str = "app.kubernetes.io/name=imageward,app.kubernetes.io/component=agent"
    """Label selector of the node-agent pods in the operator's namespace: the one watch
    through which per-node progress of every Layers-mode PrePull comes back."""

    agent_key_secret: str = "imageward-agent-key"
    """Secret (operator namespace) holding the key that seals pull credentials for the
    agent; the operator creates it when missing, the agent pods mount it."""

    cross_namespace: tuple[str, ...] = ()
    """Namespaces whose PrePulls may use fromWorkloads.namespaceSelector, besides the
    operator's own; everywhere else a PrePull reads its own namespace only."""

    max_layers_prepulls: int = MAX_AGENT_PLANS
    """Layers-mode PrePulls served at once, cluster-wide (each is one ConfigMap and one
    condition on every agent pod); at most MAX_AGENT_PLANS."""

    max_layers_prepulls_per_namespace: int = 32
    """Layers-mode PrePulls served at once per namespace, so one tenant cannot take them all."""

    max_plan_bytes_total: int = 32 * 1024 * 1024
    """Bytes of all plan documents together (every node agent reads and keeps each one,
    so this bounds the agents' memory); a plan that would go over is refused."""

    cache_max_objects: int = 100_000
    """Objects each watch-fed cache holds (workloads per kind, nodes, namespaces,
    pre-pull DaemonSets and pods)."""

    status_interval: float = 1.0
    """Seconds between two status writes of one PrePull at least. Status is recomputed
    when something it depends on changes (watched), and written only when it differs;
    during a rollout this caps the writes at one per PrePull per interval."""

    status_settle: float = 0.1
    """Seconds a change waits for others arriving with it before status is recomputed."""


@dataclasses.dataclass(frozen=True, slots=True)
class PolicySettings:
    key_material_refresh: float = 15.0
    """Seconds between reads of referenced Secrets and ConfigMaps that cannot be watched
    (the operator may only `get` them: the chart grants no list or watch on Secrets),
    one read per distinct object for all policies; and between retries of policies whose
    key material could not be read. Objects it may watch by name are followed instead."""


@dataclasses.dataclass(frozen=True, slots=True)
class ScanSettings:
    """Background scans of running workloads (the Kopf-peering leader only) and the
    PolicyReports they write."""

    enabled: bool = True
    """Whether the leader scans at all (no reports, no status.violations without it)."""

    interval: float = 3600.0
    """Seconds between full scans (tags re-resolved, signatures read again); policy and
    workload changes are scanned as they happen."""

    concurrency: int = 8
    """Registry lookups a scan has in flight at once."""

    registry_requests_per_minute: int = 600
    """Registry requests a scan may send per minute (lookups wait for budget; a lookup
    already started finishes)."""

    reports: bool = True
    """Write wgpolicyk8s.io/v1alpha2 PolicyReports (per namespace) and a ClusterPolicyReport."""

    report_max_results: int = 500
    """Results listed per report (fail first); the rest are only counted in its summary."""

    cache_max_objects: int = 200_000
    """Objects each of the scanner's watch-fed caches holds (Pods, workloads, ReplicaSets)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    namespace: str = "imageward-system"
    """The operator's own namespace (excluded from admission)."""

    metrics_port: int = 8080
    """Port of the Prometheus /metrics endpoint (0 disables it)."""

    peering_name: str = "imageward"
    """ClusterKopfPeering the replicas coordinate through (one runs the controllers, the
    others stand by). Two installations in one cluster need two names, or Kopf pauses
    the controllers of all but one of them."""

    docker_config: str | None = None
    """The operator's own registry credentials (a docker config.json), tried last."""

    docker_config_registries: tuple[str, ...] = ()
    """Registry host globs the operator's own credentials are used for (empty: every
    registry they name). Anyone who may create a pod learns the digest, size and user of
    images these credentials can read, from refusal messages: scope them."""

    registry: RegistrySettings = dataclasses.field(default_factory=RegistrySettings)
    admission: AdmissionSettings = dataclasses.field(default_factory=AdmissionSettings)
    prepull: PrePullSettings = dataclasses.field(default_factory=PrePullSettings)
    policy: PolicySettings = dataclasses.field(default_factory=PolicySettings)
    scan: ScanSettings = dataclasses.field(default_factory=ScanSettings)


def _parse_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _parse_pairs(text: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in _parse_list(text):
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"expected registry=mirror, got {item!r}")
        pairs.append((key, value))
    return tuple(pairs)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _parse_failure_policy(text: str) -> str:
    if text not in ("Fail", "Ignore"):
        raise ValueError("expected Fail or Ignore")
    return text


def _parse_admission_process(text: str) -> str:
    if text not in ADMISSION_PROCESSES:
        raise ValueError(f"expected one of {', '.join(ADMISSION_PROCESSES)}")
    return text


def _parse_positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _parse_object_name(text: str) -> str:
    if len(text) > 253 or not _DNS_SUBDOMAIN.fullmatch(text):
        raise ValueError("expected a Kubernetes object name (lower-case DNS subdomain)")
    return text


def _parse_drain_seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 60:
        raise ValueError("expected seconds between 0 and 60")
    return value


def _parse_seconds(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError("expected a number of seconds, 0 or more")
    return value


def _parse_interval(text: str) -> float:
    """Seconds ("3600", "90.5") or a Go duration ("1h", "15m30s"); at least 1 s."""
    try:
        seconds = float(text)
    except ValueError:
        from imageward.policy import model

        seconds = model.parse_duration(text.strip())
    if not seconds >= 1 or seconds == float("inf"):  # NaN and inf are no intervals
        raise ValueError("must be at least 1s")
    return seconds


def _parse_plan_count(text: str) -> int:
    value = _parse_positive(text)
    if value > MAX_AGENT_PLANS:
        raise ValueError(f"at most {MAX_AGENT_PLANS} (the plans one node agent serves)")
    return value


# variable suffix -> (group or "", field, parser)
_ENV_TABLE: Mapping[str, tuple[str, str, Callable[[str], Any]]] = {
    "NAMESPACE": ("", "namespace", str),
    "METRICS_PORT": ("", "metrics_port", int),
    "PEERING_NAME": ("", "peering_name", _parse_object_name),
    "INSECURE_REGISTRIES": ("registry", "insecure_registries", _parse_list),
    "REGISTRY_CA_BUNDLE": ("registry", "ca_bundle", str),
    "REGISTRY_MIRRORS": ("registry", "mirrors", _parse_pairs),
    "REGISTRY_REQUEST_TIMEOUT": ("registry", "request_timeout", float),
    "REGISTRY_LOOKUP_DEADLINE": ("registry", "lookup_deadline", float),
    "REGISTRY_RETRIES": ("registry", "retries", int),
    "FACTS_CACHE_SIZE": ("registry", "facts_cache_size", int),
    "TAG_CACHE_TTL": ("registry", "tag_cache_ttl", float),
    "NEGATIVE_CACHE_TTL": ("registry", "negative_cache_ttl", float),
    "SIGNATURE_CACHE_TTL": ("registry", "signature_cache_ttl", float),
    "WEBHOOK_HOST": ("admission", "host", str),
    "WEBHOOK_PORT": ("admission", "port", int),
    "WEBHOOK_TIMEOUT": ("admission", "webhook_timeout", int),
    "ADMISSION_DEADLINE": ("admission", "deadline", float),
    "DECISION_CACHE_TTL": ("admission", "decision_cache_ttl", float),
    "EXCLUDED_NAMESPACES": ("admission", "excluded_namespaces", _parse_list),
    "DOCKER_CONFIG": ("", "docker_config", str),
    "DOCKER_CONFIG_REGISTRIES": ("", "docker_config_registries", _parse_list),
    "VALIDATING_WEBHOOK": ("admission", "validating_configuration", str),
    "MUTATING_WEBHOOK": ("admission", "mutating_configuration", str),
    "WEBHOOK_SERVICE": ("admission", "service", str),
    "WEBHOOK_URL": ("admission", "url", str),
    "TLS_SECRET": ("admission", "tls_secret", str),
    "CERT_DIR": ("admission", "cert_dir", str),
    "CREATE_WEBHOOK_CONFIGURATIONS": ("admission", "create_configurations", _parse_bool),
    "WEBHOOK_FAILURE_POLICY": ("admission", "failure_policy", _parse_failure_policy),
    "TLS_CHECK_INTERVAL": ("admission", "tls_check_interval", float),
    "ADMISSION_PROCESS": ("admission", "process", _parse_admission_process),
    "SHUTDOWN_DRAIN": ("admission", "shutdown_drain", _parse_drain_seconds),
    "HELPER_IMAGE": ("prepull", "helper_image", str),
    "PAUSE_IMAGE": ("prepull", "pause_image", str),
    "PREPULL_DEFAULT_PLATFORM": ("prepull", "default_platform", str),
    "AGENT_ENABLED": ("prepull", "agent_enabled", _parse_bool),
    "AGENT_SELECTOR": ("prepull", "agent_selector", str),
    "AGENT_KEY_SECRET": ("prepull", "agent_key_secret", str),
    "PREPULL_CROSS_NAMESPACE": ("prepull", "cross_namespace", _parse_list),
    "PREPULL_MAX_LAYERS": ("prepull", "max_layers_prepulls", _parse_plan_count),
    "PREPULL_MAX_LAYERS_PER_NAMESPACE": (
        "prepull",
        "max_layers_prepulls_per_namespace",
        _parse_plan_count,
    ),
    "PREPULL_CACHE_MAX_OBJECTS": ("prepull", "cache_max_objects", _parse_positive),
    "PREPULL_MAX_PLAN_BYTES_TOTAL": ("prepull", "max_plan_bytes_total", _parse_positive),
    "PREPULL_STATUS_INTERVAL": ("prepull", "status_interval", _parse_seconds),
    "PREPULL_STATUS_SETTLE": ("prepull", "status_settle", _parse_seconds),
    "KEY_MATERIAL_REFRESH": ("policy", "key_material_refresh", _parse_interval),
    "SCAN_ENABLED": ("scan", "enabled", _parse_bool),
    "SCAN_INTERVAL": ("scan", "interval", _parse_interval),
    "SCAN_CONCURRENCY": ("scan", "concurrency", _parse_positive),
    "SCAN_REGISTRY_REQUESTS_PER_MINUTE": ("scan", "registry_requests_per_minute", _parse_positive),
    "SCAN_CACHE_MAX_OBJECTS": ("scan", "cache_max_objects", _parse_positive),
    "POLICY_REPORTS": ("scan", "reports", _parse_bool),
    "REPORT_MAX_RESULTS": ("scan", "report_max_results", _parse_positive),
}


def from_env(prefix: str = "IMAGEWARD_", environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from defaults and `<prefix><NAME>` variables; errors name the variable."""
    environ = os.environ if environ is None else environ
    top: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {
        "registry": {},
        "admission": {},
        "prepull": {},
        "policy": {},
        "scan": {},
    }
    for suffix, (group, field, parse) in _ENV_TABLE.items():
        name = prefix + suffix
        if name not in environ:
            continue
        try:
            value = parse(environ[name])
        except ValueError as e:
            raise errors.ConfigurationError(f"{name}={environ[name]!r}: {e}") from e
        (groups[group] if group else top)[field] = value
    settings = Settings(
        **top,
        registry=RegistrySettings(**groups["registry"]),
        admission=AdmissionSettings(**groups["admission"]),
        prepull=PrePullSettings(**groups["prepull"]),
        policy=PolicySettings(**groups["policy"]),
        scan=ScanSettings(**groups["scan"]),
    )
    if settings.admission.deadline >= settings.admission.webhook_timeout:
        raise errors.ConfigurationError(
            f"{prefix}ADMISSION_DEADLINE ({settings.admission.deadline}s) must be below "
            f"{prefix}WEBHOOK_TIMEOUT ({settings.admission.webhook_timeout}s), "
            "or the apiserver gives up before the handler answers"
        )
    return settings
