"""One pod's `/metrics` from two processes: the operator's registry and the admission
process's OpenMetrics text (`metrics.merge_families`), as a scrape sees them."""

from __future__ import annotations

import prometheus_client
from prometheus_client.openmetrics import exposition as openmetrics_exposition
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families

from imageward import metrics


class _Process:
    """A registry with the same shapes as imageward's (counters, a histogram, a gauge)."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self.requests = prometheus_client.Counter(
            "imageward_admission_requests",
            "Admission reviews answered.",
            ["resource", "decision"],
            registry=self.registry,
        )
        self.duration = prometheus_client.Histogram(
            "imageward_admission_duration_seconds",
            "Time to answer.",
            ["resource"],
            buckets=(0.001, 0.01, 0.1),
            registry=self.registry,
        )
        self.entries = prometheus_client.Gauge(
            "imageward_cache_entries", "Entries held.", ["cache"], registry=self.registry
        )
        self.reloads = prometheus_client.Counter(
            "imageward_policy_reloads", "Reloads.", ["trigger"], registry=self.registry
        )

    def openmetrics(self) -> str:
        text: bytes = openmetrics_exposition.generate_latest(self.registry)
        return text.decode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


class _Scrape:
    def __init__(self, own: prometheus_client.CollectorRegistry, other_text: str) -> None:
        self.own = own
        self.other_text = other_text

    def collect(self) -> list[prometheus_client.Metric]:
        return metrics.merge_families(
            self.own.collect(), openmetrics_parser.text_string_to_metric_families(self.other_text)
        )


def test_counters_histograms_and_gauges_of_both_processes_add_up() -> None:
    mine = _Process()
    theirs = _Process()
    mine.requests.labels(resource="pods", decision="allowed").inc(2)
    theirs.requests.labels(resource="pods", decision="allowed").inc(5)
    theirs.requests.labels(resource="pods", decision="denied").inc(3)
    theirs.duration.labels(resource="pods").observe(0.005)
    theirs.duration.labels(resource="pods").observe(0.05)
    mine.duration.labels(resource="pods").observe(0.0005)
    mine.entries.labels(cache="facts").set(10)
    theirs.entries.labels(cache="facts").set(7)
    theirs.entries.labels(cache="signatures").set(4)

    text = prometheus_client.generate_latest(_Scrape(mine.registry, theirs.openmetrics())).decode()
    found = _samples(text)

    def at(name: str, **labels: str) -> float:
        return found[(name, tuple(sorted(labels.items())))]

    assert at("imageward_admission_requests_total", resource="pods", decision="allowed") == 7
    assert at("imageward_admission_requests_total", resource="pods", decision="denied") == 3
    assert at("imageward_admission_duration_seconds_count", resource="pods") == 3
    assert at("imageward_admission_duration_seconds_bucket", resource="pods", le="0.001") == 1
    assert at("imageward_admission_duration_seconds_bucket", resource="pods", le="0.01") == 2
    assert at("imageward_admission_duration_seconds_bucket", resource="pods", le="+Inf") == 3
    assert abs(at("imageward_admission_duration_seconds_sum", resource="pods") - 0.0555) < 1e-9
    assert at("imageward_cache_entries", cache="facts") == 17
    assert at("imageward_cache_entries", cache="signatures") == 4
    # Each family once: a duplicated HELP/TYPE block is refused by Prometheus.
    assert text.count("# TYPE imageward_admission_requests_total counter") == 1


def test_the_earliest_created_timestamp_stands_and_reloads_are_counted_once() -> None:
    mine = _Process()
    theirs = _Process()
    mine.reloads.labels(trigger="watch").inc()
    theirs.reloads.labels(trigger="watch").inc()
    theirs.reloads.labels(trigger="poll").inc()
    mine.requests.labels(resource="pods", decision="allowed").inc()
    theirs.requests.labels(resource="pods", decision="allowed").inc()
    other = list(openmetrics_parser.text_string_to_metric_families(theirs.openmetrics()))
    merged = {f.name: f for f in metrics.merge_families(mine.registry.collect(), other)}

    reloads = {
        (s.name, s.labels["trigger"]): s.value for s in merged["imageward_policy_reloads"].samples
    }
    # Both processes follow the same key material: the pod reloaded once, not twice.
    assert reloads[("imageward_policy_reloads_total", "watch")] == 1
    assert ("imageward_policy_reloads_total", "poll") not in reloads

    created = [
        s.value
        for s in merged["imageward_admission_requests"].samples
        if s.name.endswith("_created")
    ]
    theirs_created = [
        s.value
        for f in other
        if f.name == "imageward_admission_requests"
        for s in f.samples
        if s.name.endswith("_created")
    ]
    mine_created = [
        s.value
        for f in mine.registry.collect()
        if f.name == "imageward_admission_requests"
        for s in f.samples
        if s.name.endswith("_created")
    ]
    assert created == [min(mine_created[0], theirs_created[0])]


def _allowed(text: str) -> float:
    return _samples(text)[
        ("imageward_admission_requests_total", (("decision", "allowed"), ("resource", "pods")))
    ]


def test_a_scrape_the_admission_process_never_answered_shows_the_operator_alone() -> None:
    mine = _Process()
    mine.requests.labels(resource="pods", decision="allowed").inc(4)
    alone = metrics.Merged(mine.registry, lambda: None)
    broken = metrics.Merged(mine.registry, lambda: (1, "imageward_x{ not openmetrics\n"))
    for merged in (alone, broken):
        assert _allowed(prometheus_client.generate_latest(merged).decode()) == 4


def test_the_pods_counters_never_go_down_when_the_admission_process_restarts() -> None:
    # A drop would be a counter reset to Prometheus: rate() would count it all again.
    mine, first, second = _Process(), _Process(), _Process()
    answers: list[tuple[int, str] | None] = []
    merged = metrics.Merged(mine.registry, lambda: answers[-1])

    def scrape() -> str:
        return prometheus_client.generate_latest(merged).decode()

    mine.requests.labels(resource="pods", decision="allowed").inc(1)
    first.requests.labels(resource="pods", decision="allowed").inc(5)
    first.duration.labels(resource="pods").observe(0.005)
    first.entries.labels(cache="facts").set(9)
    answers.append((1, first.openmetrics()))
    assert _allowed(scrape()) == 6
    answers.append(None)  # restarting: it cannot answer this scrape
    text = scrape()
    assert _allowed(text) == 6
    assert (
        _samples(text)[("imageward_admission_duration_seconds_count", (("resource", "pods"),))] == 1
    )
    second.requests.labels(resource="pods", decision="allowed").inc(2)  # counts from 0 again
    second.entries.labels(cache="facts").set(1)
    answers.append((2, second.openmetrics()))
    text = scrape()
    assert _allowed(text) == 8
    # The histogram the new process has not observed into yet keeps its earlier count.
    assert (
        _samples(text)[("imageward_admission_duration_seconds_count", (("resource", "pods"),))] == 1
    )
    # A gauge is what the live process holds now, not a sum over its lives.
    assert _samples(text)[("imageward_cache_entries", (("cache", "facts"),))] == 1
    second.requests.labels(resource="pods", decision="allowed").inc(1)
    answers.append((2, second.openmetrics()))
    assert _allowed(scrape()) == 9


def test_a_scrape_restricted_by_name_sees_both_processes() -> None:
    mine, theirs = _Process(), _Process()
    mine.requests.labels(resource="pods", decision="allowed").inc(1)
    theirs.requests.labels(resource="pods", decision="allowed").inc(2)
    theirs.entries.labels(cache="facts").set(3)
    merged = metrics.Merged(mine.registry, lambda: (1, theirs.openmetrics()))
    restricted = merged.restricted_registry(["imageward_admission_requests_total"])
    text = prometheus_client.generate_latest(restricted).decode()
    assert _allowed(text) == 3
    assert "imageward_cache_entries" not in text


def test_the_merged_scrape_is_valid_openmetrics_too() -> None:
    # Prometheus asks for OpenMetrics first: the merged families must encode there as well.
    mine = _Process()
    theirs = _Process()
    mine.duration.labels(resource="pods").observe(0.002)
    theirs.duration.labels(resource="deployments").observe(0.2)
    merged = metrics.Merged(mine.registry, lambda: (1, theirs.openmetrics()))
    text = openmetrics_exposition.generate_latest(merged).decode()
    families = {f.name: f for f in openmetrics_parser.text_string_to_metric_families(text)}
    counts = {
        s.labels["resource"]: s.value
        for s in families["imageward_admission_duration_seconds"].samples
        if s.name.endswith("_count")
    }
    assert counts == {"pods": 1, "deployments": 1}
