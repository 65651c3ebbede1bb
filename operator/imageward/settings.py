"""One settings object, built once at start-up and passed explicitly.

Grouped frozen records (`records.Record`) with documented defaults; `from_env("IMAGEWARD_")` reads
overrides from the environment through one table, so every error names its variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from imageward import errors, records

_set = object.__setattr__  # how a frozen Record's __init__ sets its fields


class RegistrySettings(records.Record):
    """How registries are reached: transport, limits, retries and caches."""

    __slots__ = (
        "ca_bundle",
        "facts_cache_size",
        "insecure_registries",
        "lookup_deadline",
        "max_concurrency",
        "max_config_bytes",
        "max_manifest_bytes",
        "mirrors",
        "negative_cache_ttl",
        "request_timeout",
        "retries",
        "signature_cache_ttl",
        "tag_cache_ttl",
    )
    insecure_registries: tuple[str, ...]
    """Hosts (host[:port]) reached over plain HTTP, like containerd's `insecure` hosts."""

    ca_bundle: str | None
    """PEM file of extra CAs trusted for HTTPS registries (None: the system store)."""

    mirrors: tuple[tuple[str, str], ...]
    """(registry, mirror) pairs: lookups try the mirror first, then the registry."""

    request_timeout: float
    """Seconds for one HTTP request, headers and body; bounded again by each deadline."""

    lookup_deadline: float
    """Seconds for a whole lookup (auth, redirects, retries) unless the caller passes one."""

    max_manifest_bytes: int
    """Manifests and indexes larger than this are refused (real ones are a few KiB; a
    1,000-layer manifest is about 200 KiB)."""

    max_config_bytes: int
    """Image config blobs larger than this are refused (forbidRootUser then refuses)."""

    retries: int
    """Extra attempts after a 5xx or a connection error, inside the deadline."""

    facts_cache_size: int
    """Image facts kept, keyed by digest (immutable, so never stale)."""

    tag_cache_ttl: float
    """Seconds a tag-to-digest resolution is trusted."""

    negative_cache_ttl: float
    """Seconds a 'not found' is remembered, so a burst of bad pods costs one lookup."""

    signature_cache_ttl: float
    """Seconds the signatures found for a digest are reused before asking again."""

    max_concurrency: int
    """HTTP requests in flight to all registries at once."""

    def __init__(
        self,
        insecure_registries: tuple[str, ...] = (),
        ca_bundle: str | None = None,
        mirrors: tuple[tuple[str, str], ...] = (),
        request_timeout: float = 5.0,
        lookup_deadline: float = 8.0,
        max_manifest_bytes: int = 1024 * 1024,
        max_config_bytes: int = 2 * 1024 * 1024,
        retries: int = 2,
        facts_cache_size: int = 4096,
        tag_cache_ttl: float = 30.0,
        negative_cache_ttl: float = 5.0,
        signature_cache_ttl: float = 30.0,
        max_concurrency: int = 64,
    ) -> None:
        _set(self, "insecure_registries", insecure_registries)
        _set(self, "ca_bundle", ca_bundle)
        _set(self, "mirrors", mirrors)
        _set(self, "request_timeout", request_timeout)
        _set(self, "lookup_deadline", lookup_deadline)
        _set(self, "max_manifest_bytes", max_manifest_bytes)
        _set(self, "max_config_bytes", max_config_bytes)
        _set(self, "retries", retries)
        _set(self, "facts_cache_size", facts_cache_size)
        _set(self, "tag_cache_ttl", tag_cache_ttl)
        _set(self, "negative_cache_ttl", negative_cache_ttl)
        _set(self, "signature_cache_ttl", signature_cache_ttl)
        _set(self, "max_concurrency", max_concurrency)


#: Where the webhook may be served (AdmissionSettings.process).
ADMISSION_PROCESSES = ("own", "shared")


class AdmissionSettings(records.Record):
    """The admission webhook: its server, deadlines and webhook configurations."""

    __slots__ = (
        "cert_dir",
        "create_configurations",
        "deadline",
        "decision_cache_ttl",
        "excluded_namespaces",
        "failure_policy",
        "host",
        "mutating_configuration",
        "port",
        "process",
        "service",
        "shutdown_drain",
        "tls_check_interval",
        "tls_secret",
        "url",
        "validating_configuration",
        "webhook_timeout",
    )
    host: str
    """Address the webhook server listens on."""

    port: int
    """HTTPS port of the webhook server."""

    webhook_timeout: int
    """Seconds the apiserver waits for the webhook (timeoutSeconds, at most 30)."""

    deadline: float
    """Seconds the handler allows itself; below webhook_timeout so it answers in time."""

    excluded_namespaces: tuple[str, ...]
    """Namespaces never checked, besides the operator's own."""

    validating_configuration: str
    """ValidatingWebhookConfiguration whose caBundle the operator keeps current."""

    mutating_configuration: str
    """MutatingWebhookConfiguration (digest pinning) whose caBundle the operator keeps
    current; "" when there is none (the chart's `webhook.mutating.enabled: false`): the
    validating webhook then checks pinDigest policies without asking for their pins."""

    service: str | None
    """Service in front of the webhook (in-cluster); None: the apiserver calls `url`."""

    url: str | None
    """Base URL the apiserver calls when there is no Service (local clusters, tests)."""

    tls_secret: str | None
    """Secret (operator namespace) holding the CA and serving certificate replicas share;
    None keeps them in memory (one replica)."""

    cert_dir: str | None
    """Directory with tls.crt/tls.key/ca.crt made by someone else (cert-manager); the
    operator then only serves them and does not patch caBundle."""

    create_configurations: bool
    """Create missing webhook configurations (dev, tests); the chart renders its own."""

    failure_policy: str
    """failurePolicy of webhook configurations the operator creates."""

    tls_check_interval: float
    """Seconds between checks whether the serving certificate needs renewing."""

    process: str
    """Where the webhook is served: "own", a process of its own beside the operator's
    (`admission.worker`), so the controllers' work, their garbage collections and the
    GIL never hold a review up; "shared", the operator's event loop (one process less,
    about 105 MiB less resident memory, for small clusters and debugging)."""

    decision_cache_ttl: float
    """Seconds a review's outcome is given again to reviews asking the same question (a
    rollout's pods): `admission.decisions`. Never longer than the tag, signature and
    "not found" TTLs allow (0 there switches it off too); 0 checks every review."""

    shutdown_drain: float
    """Seconds the webhook server keeps answering once the operator is told to stop,
    each connection closed after its next answer: behind a Service the apiserver learns
    a moment later that the replica is gone, and reuses connections it holds to it
    (the chart sets 5). 0: stop at once (one local process, tests)."""

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = 9443,
        webhook_timeout: int = 10,
        deadline: float = 8.0,
        excluded_namespaces: tuple[str, ...] = ("kube-system",),
        validating_configuration: str = "imageward",
        mutating_configuration: str = "imageward",
        service: str | None = None,
        url: str | None = None,
        tls_secret: str | None = None,
        cert_dir: str | None = None,
        create_configurations: bool = True,
        failure_policy: str = "Fail",
        tls_check_interval: float = 3600.0,
        process: str = "own",
        decision_cache_ttl: float = 1.0,
        shutdown_drain: float = 0.0,
    ) -> None:
        _set(self, "host", host)
        _set(self, "port", port)
        _set(self, "webhook_timeout", webhook_timeout)
        _set(self, "deadline", deadline)
        _set(self, "excluded_namespaces", excluded_namespaces)
        _set(self, "validating_configuration", validating_configuration)
        _set(self, "mutating_configuration", mutating_configuration)
        _set(self, "service", service)
        _set(self, "url", url)
        _set(self, "tls_secret", tls_secret)
        _set(self, "cert_dir", cert_dir)
        _set(self, "create_configurations", create_configurations)
        _set(self, "failure_policy", failure_policy)
        _set(self, "tls_check_interval", tls_check_interval)
        _set(self, "process", process)
        _set(self, "decision_cache_ttl", decision_cache_ttl)
        _set(self, "shutdown_drain", shutdown_drain)


#: Plans one node agent serves, so conditions one agent pod carries, at most.
MAX_AGENT_PLANS = 256


class PrePullSettings(records.Record):
    """PrePulls: the images their pods run, the node agent, and their limits."""

    __slots__ = (
        "agent_enabled",
        "agent_key_secret",
        "agent_selector",
        "cache_max_objects",
        "cross_namespace",
        "default_platform",
        "helper_image",
        "max_layers_prepulls",
        "max_layers_prepulls_per_namespace",
        "max_plan_bytes_total",
        "pause_image",
        "status_interval",
        "status_settle",
    )
    helper_image: str
    """Image holding /imageward-helper, the static binary pre-pull init containers run."""

    pause_image: str
    """The long-lived container of pre-pull pods."""

    default_platform: str
    """Platform planned for when a PrePull's nodeSelector does not name an architecture."""

    agent_enabled: bool
    """Whether the node-agent DaemonSet runs (chart value agent.enabled); without it a
    Layers-mode PrePull is refused with reason AgentDisabled instead of waiting."""

    agent_selector: str
    """Label selector of the node-agent pods in the operator's namespace: the one watch
    through which per-node progress of every Layers-mode PrePull comes back."""

    agent_key_secret: str
    """Secret (operator namespace) holding the key that seals pull credentials for the
    agent; the operator creates it when missing, the agent pods mount it."""

    cross_namespace: tuple[str, ...]
    """Namespaces whose PrePulls may use fromWorkloads.namespaceSelector, besides the
    operator's own; everywhere else a PrePull reads its own namespace only."""

    max_layers_prepulls: int
    """Layers-mode PrePulls served at once, cluster-wide (each is one ConfigMap and one
    condition on every agent pod); at most MAX_AGENT_PLANS."""

    max_layers_prepulls_per_namespace: int
    """Layers-mode PrePulls served at once per namespace, so one tenant cannot take them all."""

    max_plan_bytes_total: int
    """Bytes of all plan documents together (every node agent reads and keeps each one,
    so this bounds the agents' memory); a plan that would go over is refused."""

    cache_max_objects: int
    """Objects each watch-fed cache holds (workloads per kind, nodes, namespaces,
    pre-pull DaemonSets and pods)."""

    status_interval: float
    """Seconds between two status writes of one PrePull at least. Status is recomputed
    when something it depends on changes (watched), and written only when it differs;
    during a rollout this caps the writes at one per PrePull per interval."""

    status_settle: float
    """Seconds a change waits for others arriving with it before status is recomputed."""

    def __init__(
        self,
        helper_image: str = "ghcr.io/imageward/imageward:0.1.0",
        pause_image: str = "registry.k8s.io/pause:3.10",
        default_platform: str = "linux/amd64",
        agent_enabled: bool = True,
        agent_selector: str = "app.kubernetes.io/name=imageward,app.kubernetes.io/component=agent",
        agent_key_secret: str = "imageward-agent-key",
        cross_namespace: tuple[str, ...] = (),
        max_layers_prepulls: int = MAX_AGENT_PLANS,
        max_layers_prepulls_per_namespace: int = 32,
        max_plan_bytes_total: int = 32 * 1024 * 1024,
        cache_max_objects: int = 100_000,
        status_interval: float = 1.0,
        status_settle: float = 0.1,
    ) -> None:
        _set(self, "helper_image", helper_image)
        _set(self, "pause_image", pause_image)
        _set(self, "default_platform", default_platform)
        _set(self, "agent_enabled", agent_enabled)
        _set(self, "agent_selector", agent_selector)
        _set(self, "agent_key_secret", agent_key_secret)
        _set(self, "cross_namespace", cross_namespace)
        _set(self, "max_layers_prepulls", max_layers_prepulls)
        _set(self, "max_layers_prepulls_per_namespace", max_layers_prepulls_per_namespace)
        _set(self, "max_plan_bytes_total", max_plan_bytes_total)
        _set(self, "cache_max_objects", cache_max_objects)
        _set(self, "status_interval", status_interval)
        _set(self, "status_settle", status_settle)


class PolicySettings(records.Record):
    """How policies' key material is kept current."""

    __slots__ = ("key_material_refresh",)
    key_material_refresh: float
    """Seconds between reads of referenced Secrets and ConfigMaps that cannot be watched
    (the operator may only `get` them: the chart grants no list or watch on Secrets),
    one read per distinct object for all policies; and between retries of policies whose
    key material could not be read. Objects it may watch by name are followed instead."""

    def __init__(
        self,
        key_material_refresh: float = 15.0,
    ) -> None:
        _set(self, "key_material_refresh", key_material_refresh)


class ScanSettings(records.Record):
    """Background scans of running workloads (the Kopf-peering leader only) and the
    PolicyReports they write."""

    __slots__ = (
        "cache_max_objects",
        "concurrency",
        "enabled",
        "interval",
        "registry_requests_per_minute",
        "report_max_results",
        "reports",
    )
    enabled: bool
    """Whether the leader scans at all (no reports, no status.violations without it)."""

    interval: float
    """Seconds between full scans (tags re-resolved, signatures read again); policy and
    workload changes are scanned as they happen."""

    concurrency: int
    """Registry lookups a scan has in flight at once."""

    registry_requests_per_minute: int
    """Registry requests a scan may send per minute (lookups wait for budget; a lookup
    already started finishes)."""

    reports: bool
    """Write wgpolicyk8s.io/v1alpha2 PolicyReports (per namespace) and a ClusterPolicyReport."""

    report_max_results: int
    """Results listed per report (fail first); the rest are only counted in its summary."""

    cache_max_objects: int
    """Objects each of the scanner's watch-fed caches holds (Pods, workloads, ReplicaSets)."""

    def __init__(
        self,
        enabled: bool = True,
        interval: float = 3600.0,
        concurrency: int = 8,
        registry_requests_per_minute: int = 600,
        reports: bool = True,
        report_max_results: int = 500,
        cache_max_objects: int = 200_000,
    ) -> None:
        _set(self, "enabled", enabled)
        _set(self, "interval", interval)
        _set(self, "concurrency", concurrency)
        _set(self, "registry_requests_per_minute", registry_requests_per_minute)
        _set(self, "reports", reports)
        _set(self, "report_max_results", report_max_results)
        _set(self, "cache_max_objects", cache_max_objects)


class Settings(records.Record):
    """Everything the operator is configured with (`from_env` reads it)."""

    __slots__ = (
        "admission",
        "docker_config",
        "docker_config_registries",
        "metrics_port",
        "namespace",
        "peering_name",
        "policy",
        "prepull",
        "registry",
        "scan",
    )
    namespace: str
    """The operator's own namespace (excluded from admission)."""

    metrics_port: int
    """Port of the Prometheus /metrics endpoint (0 disables it)."""

    peering_name: str
    """ClusterKopfPeering the replicas coordinate through (one runs the controllers, the
    others stand by). Two installations in one cluster need two names, or Kopf pauses
    the controllers of all but one of them."""

    docker_config: str | None
    """The operator's own registry credentials (a docker config.json), tried last."""

    docker_config_registries: tuple[str, ...]
    """Registry host globs the operator's own credentials are used for (empty: every
    registry they name). Anyone who may create a pod learns the digest, size and user of
    images these credentials can read, from refusal messages: scope them."""

    registry: RegistrySettings
    admission: AdmissionSettings
    prepull: PrePullSettings
    policy: PolicySettings
    scan: ScanSettings

    def __init__(
        self,
        namespace: str = "imageward-system",
        metrics_port: int = 8080,
        peering_name: str = "imageward",
        docker_config: str | None = None,
        docker_config_registries: tuple[str, ...] = (),
        registry: RegistrySettings = records.FACTORY,
        admission: AdmissionSettings = records.FACTORY,
        prepull: PrePullSettings = records.FACTORY,
        policy: PolicySettings = records.FACTORY,
        scan: ScanSettings = records.FACTORY,
    ) -> None:
        # A new group each time, as the dataclass's default_factory made it.
        if registry is records.FACTORY:
            registry = RegistrySettings()
        if admission is records.FACTORY:
            admission = AdmissionSettings()
        if prepull is records.FACTORY:
            prepull = PrePullSettings()
        if policy is records.FACTORY:
            policy = PolicySettings()
        if scan is records.FACTORY:
            scan = ScanSettings()
        _set(self, "namespace", namespace)
        _set(self, "metrics_port", metrics_port)
        _set(self, "peering_name", peering_name)
        _set(self, "docker_config", docker_config)
        _set(self, "docker_config_registries", docker_config_registries)
        _set(self, "registry", registry)
        _set(self, "admission", admission)
        _set(self, "prepull", prepull)
        _set(self, "policy", policy)
        _set(self, "scan", scan)


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
