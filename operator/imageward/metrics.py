"""Every Prometheus metric imageward exports, and the helpers that record them.

The only module that imports prometheus_client. Names are a contract (product.md):
extend, never rename. No label ever carries an image reference (unbounded cardinality).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import prometheus_client
from prometheus_client.metrics_core import Metric

from imageward.admission import webhooks

REGISTRY = prometheus_client.CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

admission_requests = prometheus_client.Counter(
    "imageward_admission_requests_total",
    "Admission reviews answered, by resource, operation and decision.",
    ["resource", "operation", "decision"],
    registry=REGISTRY,
)
admission_duration = prometheus_client.Histogram(
    "imageward_admission_duration_seconds",
    "Time to answer one admission review.",
    ["resource"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
policy_evaluations = prometheus_client.Counter(
    "imageward_policy_evaluations_total",
    "Rule evaluations per policy, rule and result (pass, fail, error).",
    ["policy", "rule", "result"],
    registry=REGISTRY,
)
signature_verifications = prometheus_client.Counter(
    "imageward_signature_verifications_total",
    "Signature verifications per policy, authority, format (bundle, legacy) and result.",
    ["policy", "authority", "format", "result"],
    registry=REGISTRY,
)
attestation_verifications = prometheus_client.Counter(
    "imageward_attestation_verifications_total",
    "Attestation entries evaluated per policy, attestation (entry name) and result "
    "(pass, fail, error).",
    ["policy", "attestation", "result"],
    registry=REGISTRY,
)
registry_requests = prometheus_client.Counter(
    "imageward_registry_requests_total",
    "HTTP requests sent to registries, by registry, kind and status code.",
    ["registry", "kind", "code"],
    registry=REGISTRY,
)
registry_request_duration = prometheus_client.Histogram(
    "imageward_registry_request_duration_seconds",
    "Registry request latency by registry and kind.",
    ["registry", "kind"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
cache_lookups = prometheus_client.Counter(
    "imageward_cache_lookups_total",
    "Cache lookups by cache and result (hit, miss).",
    ["cache", "result"],
    registry=REGISTRY,
)
cache_entries = prometheus_client.Gauge(
    "imageward_cache_entries",
    "Entries currently held per cache.",
    ["cache"],
    registry=REGISTRY,
)
prepull_nodes = prometheus_client.Gauge(
    "imageward_prepull_nodes",
    "Nodes of a PrePull by state (desired, ready, failed).",
    ["namespace", "prepull", "state"],
    registry=REGISTRY,
)
prepull_planned_bytes = prometheus_client.Gauge(
    "imageward_prepull_planned_bytes",
    "Bytes of layers planned per node for a PrePull.",
    ["namespace", "prepull"],
    registry=REGISTRY,
)
prepull_saved_bytes = prometheus_client.Gauge(
    "imageward_prepull_saved_bytes",
    "Sum over the PrePull's images of the planned bytes each one contains.",
    ["namespace", "prepull"],
    registry=REGISTRY,
)
prepull_status_writes = prometheus_client.Counter(
    "imageward_prepull_status_writes_total",
    "PrePull status patches the controller sent (one per change it saw, at most one per "
    "PrePull per IMAGEWARD_PREPULL_STATUS_INTERVAL).",
    registry=REGISTRY,
)
policy_reloads = prometheus_client.Counter(
    "imageward_policy_reloads_total",
    "ImagePolicies loaded again because key material they reference changed (trigger: "
    "watch, poll, retry).",
    ["trigger"],
    registry=REGISTRY,
)
agent_fetched_bytes = prometheus_client.Counter(
    "imageward_agent_fetched_bytes_total",
    "Bytes the node agent fetched into containerd.",
    ["prepull"],
    registry=REGISTRY,
)
agent_fetch_duration = prometheus_client.Histogram(
    "imageward_agent_fetch_duration_seconds",
    "Time the node agent took to fetch one planned blob.",
    ["prepull"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)

# -- background scans, PolicyReports, exceptions ------------------------------------------
_SCAN_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

scan_duration = prometheus_client.Histogram(
    "imageward_scan_duration_seconds",
    "Time one background scan took, by what started it (interval, policy, workload).",
    ["trigger"],
    buckets=_SCAN_BUCKETS,
    registry=REGISTRY,
)
scan_workloads = prometheus_client.Counter(
    "imageward_scan_workloads_total",
    "Workloads a background scan checked, by their worst result (pass, fail, warn, error, "
    "skip; none when no policy matches their images).",
    ["result"],
    registry=REGISTRY,
)
running_violations = prometheus_client.Gauge(
    "imageward_running_violations",
    "Running workloads that break a policy's rule now (fail or warn in the PolicyReports).",
    ["policy", "rule"],
    registry=REGISTRY,
)
policy_mode = prometheus_client.Gauge(
    "imageward_policy_mode",
    "1 for each ImagePolicy and its mode (Enforce, Warn, Audit), set by the scanning replica.",
    ["policy", "mode"],
    registry=REGISTRY,
)
policy_exceptions_applied = prometheus_client.Counter(
    "imageward_policy_exceptions_applied_total",
    "Admissions in which an ImagePolicyException waived a violation of the policy.",
    ["policy"],
    registry=REGISTRY,
)
report_writes = prometheus_client.Counter(
    "imageward_report_writes_total",
    "Writes to the API server by background scans, by kind (PolicyReport, "
    "ClusterPolicyReport, ImagePolicy, ImagePolicyException) and verb.",
    ["kind", "verb"],
    registry=REGISTRY,
)


def observe_registry_request(registry: str, kind: str, code: int | str, seconds: float) -> None:
    registry_requests.labels(registry=registry, kind=kind, code=str(code)).inc()
    registry_request_duration.labels(registry=registry, kind=kind).observe(seconds)


def observe_cache_lookup(cache: str, *, hit: bool, entries: int) -> None:
    cache_lookups.labels(cache=cache, result="hit" if hit else "miss").inc()
    cache_entries.labels(cache=cache).set(entries)


#: The admission metrics' labelled children, bound once per label values: `.labels()`
#: validates and locks on every call. At most 256 kept (a client other than the
#: apiserver could name any resource).
_ADMISSION_CHILDREN: dict[tuple[str, str, str], tuple[Any, Any]] = {}


def observe_admission(resource: str, operation: str, decision: str, seconds: float) -> None:
    if resource not in webhooks.RESOURCES:
        resource = "other"  # the client names it: the label's values stay a fixed few
    key = (resource, operation, decision)
    children = _ADMISSION_CHILDREN.get(key)
    if children is None:
        children = (
            admission_requests.labels(resource=resource, operation=operation, decision=decision),
            admission_duration.labels(resource=resource),
        )
        if len(_ADMISSION_CHILDREN) < 256:
            _ADMISSION_CHILDREN[key] = children
    children[0].inc()
    children[1].observe(seconds)


#: What `others` gives the metrics server: (generation, OpenMetrics text), the
#: generation changing whenever the other process was started again; None when it
#: cannot answer now.
OtherMetrics = Callable[[], "tuple[int, str] | None"]


def start_http_server(
    port: int, addr: str = "0.0.0.0", *, others: OtherMetrics | None = None
) -> None:
    """Serve `/metrics`; with `others`, also the admission process's metrics
    (`admission.process`), merged into the same families (`Merged`)."""
    registry: Any = REGISTRY if others is None else Merged(REGISTRY, others)
    prometheus_client.start_http_server(port, addr=addr, registry=registry)


def exposition() -> bytes:
    return prometheus_client.generate_latest(REGISTRY)


def openmetrics_exposition() -> bytes:
    """This process's metrics in OpenMetrics text: unlike the 0.0.4 format it keeps
    `_created` inside its family, so `merge_families` sees the shape `collect()` gives."""
    from prometheus_client.openmetrics import exposition as openmetrics

    text: bytes = openmetrics.generate_latest(REGISTRY)  # type: ignore[no-untyped-call]
    return text


#: Families both processes count for the same events (each follows the key material of
#: every policy): the operator's own figure is the pod's.
COUNTED_ONCE = frozenset({"imageward_policy_reloads"})


def merge_families(own: Iterable[Metric], others: Iterable[Metric]) -> list[Metric]:
    """One pod's metrics from its processes: samples with the same name and labels add
    up (counters, histograms, gauges of entries or nodes held), except `_created`
    timestamps, where the earliest stands, and `COUNTED_ONCE`, where `own` stands."""
    merged = {family.name: _copy(family) for family in own}
    for family in others:
        mine = merged.get(family.name)
        if mine is None:
            merged[family.name] = _copy(family)
            continue
        if family.name in COUNTED_ONCE:
            continue
        if family.type != mine.type:
            logging.getLogger(__name__).warning(
                "metric %s is a %s here and a %s in the admission process: left out",
                family.name,
                mine.type,
                family.type,
            )
            continue
        index = {(s.name, _label_key(s.labels)): i for i, s in enumerate(mine.samples)}
        for sample in family.samples:
            at = index.get((sample.name, _label_key(sample.labels)))
            if at is None:
                mine.samples.append(sample)
                continue
            current = mine.samples[at]
            if sample.name.endswith("_created"):
                value = min(current.value, sample.value)
            else:
                value = current.value + sample.value
            mine.samples[at] = current._replace(value=value)
    return list(merged.values())


def parse_openmetrics(text: str) -> list[Metric]:
    from prometheus_client.openmetrics import parser

    return list(parser.text_string_to_metric_families(text))  # type: ignore[no-untyped-call]


def _copy(family: Metric) -> Metric:
    copied = Metric(family.name, family.documentation, family.type, family.unit)
    copied.samples = list(family.samples)
    return copied


def _label_key(labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


#: Family types whose samples only grow while their process lives (but `_created`).
_CUMULATIVE = frozenset({"counter", "histogram", "summary", "gaugehistogram"})

_SampleKey = tuple[str, str, tuple[tuple[str, str], ...]]  # family, sample, labels


class Merged:
    """What the metrics server collects from: this process's registry and the other
    process's metrics, merged per scrape (`merge_families`).

    The other process's counters must not go down in the pod's sum, or Prometheus takes
    the drop for a reset and counts everything again as new: what a process counted
    before it was started again (a new generation) is kept and added to what the new
    one counts, and a scrape the other process cannot answer shows the last counts it
    gave. Its gauges are the last answer's only (they describe a process that is gone).
    """

    def __init__(self, registry: prometheus_client.CollectorRegistry, others: OtherMetrics):
        self.registry = registry
        self.others = others
        self._lock = threading.Lock()  # the server answers scrapes in threads
        self._generation: int | None = None
        self._shapes: dict[str, tuple[str, str, str]] = {}  # family: documentation, type, unit
        self._current: dict[_SampleKey, float] = {}  # the current generation's counts
        self._before: dict[_SampleKey, float] = {}  # what earlier generations counted
        self._created: dict[_SampleKey, float] = {}
        self._order: dict[_SampleKey, None] = {}  # as first seen: a series' samples together
        self._gauges: list[Metric] = []

    def collect(self) -> list[Metric]:
        own = list(self.registry.collect())
        answer = self.others()
        with self._lock:
            if answer is not None:
                self._take(*answer)
            others = self._families()
        return merge_families(own, others)

    def restricted_registry(self, names: Iterable[str]) -> _Restricted:
        """prometheus_client's `?name[]=` scrapes."""
        return _Restricted(self, frozenset(names))

    def _take(self, generation: int, text: str) -> None:
        try:
            families = parse_openmetrics(text)
        except ValueError as e:
            logging.getLogger(__name__).warning("admission process metrics left out: %s", e)
            return
        if self._generation is not None and generation != self._generation:
            for key, value in self._current.items():
                self._before[key] = self._before.get(key, 0.0) + value
        self._generation = generation
        self._current = {}
        self._gauges = []
        for family in families:
            self._shapes[family.name] = (family.documentation, family.type, family.unit)
            if family.type not in _CUMULATIVE:
                self._gauges.append(family)
                continue
            for sample in family.samples:
                key = (family.name, sample.name, _label_key(sample.labels))
                self._order.setdefault(key)
                if sample.name.endswith("_created"):
                    self._created[key] = min(self._created.get(key, sample.value), sample.value)
                else:
                    self._current[key] = sample.value

    def _families(self) -> list[Metric]:
        built: dict[str, Metric] = {}
        for key in self._order:
            family_name, sample_name, labels = key
            family = built.get(family_name)
            if family is None:
                documentation, type_, unit = self._shapes[family_name]
                family = built[family_name] = Metric(family_name, documentation, type_, unit)
            if key in self._created:
                value = self._created[key]
            else:
                value = self._before.get(key, 0.0) + self._current.get(key, 0.0)
            family.add_sample(sample_name, dict(labels), value)
        return [*built.values(), *self._gauges]


class _Restricted:
    def __init__(self, merged: Merged, names: frozenset[str]) -> None:
        self.merged = merged
        self.names = names

    def collect(self) -> list[Metric]:
        found = []
        for family in self.merged.collect():
            samples = [s for s in family.samples if s.name in self.names]
            if samples:
                family.samples = samples
                found.append(family)
        return found
