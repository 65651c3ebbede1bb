"""A real Prometheus (Debian's) scraping given targets, with a small query helper.

Besides static targets it takes whole scrape configurations, e.g. the ones
`ServiceMonitorDiscovery` makes of a ServiceMonitor as prometheus-operator would: the
harness reads the selected Service's EndpointSlices into file_sd files (Debian's
Prometheus is built without Kubernetes discovery), so Prometheus finds the pods behind
the Service and follows them through rollouts."""

from __future__ import annotations

import json
import pathlib
import shutil
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

from imageward.localcluster import processes, tools


class PrometheusError(RuntimeError):
    pass


def _selected(monitor: Mapping[str, Any], service: Mapping[str, Any]) -> bool:
    spec = monitor["spec"]
    namespace = monitor["metadata"].get("namespace", "default")
    names = spec.get("namespaceSelector", {}).get("matchNames") or [namespace]
    selector = spec["selector"]
    if set(selector) - {"matchLabels"}:
        raise ValueError("only selector.matchLabels is translated")
    labels = service["metadata"].get("labels") or {}
    return service["metadata"].get("namespace") in names and all(
        labels.get(key) == value for key, value in selector.get("matchLabels", {}).items()
    )


def build_servicemonitor_targets(
    monitor: Mapping[str, Any], objects: Sequence[Mapping[str, Any]]
) -> list[list[dict[str, Any]]]:
    """What Prometheus would discover for each endpoint of `monitor` (a
    monitoring.coreos.com/v1 ServiceMonitor) in `objects` (Services and EndpointSlices),
    as prometheus-operator configures it: Services whose labels match `selector`, in the
    selected namespaces; every endpoint's addresses (ready or not, as Kubernetes discovery
    lists them) on the endpoint's named port;
    labelled namespace, service, pod, endpoint, and job = the Service's name. One list
    of file_sd target groups per endpoint of the ServiceMonitor."""
    services = [o for o in objects if o.get("kind") == "Service" and _selected(monitor, o)]
    slices = [o for o in objects if o.get("kind") == "EndpointSlice"]
    groups: list[list[dict[str, Any]]] = []
    for endpoint in monitor["spec"]["endpoints"]:
        port_name = endpoint["port"]
        found: list[dict[str, Any]] = []
        for service in services:
            name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
            for piece in slices:
                meta = piece["metadata"]
                if meta.get("namespace") != namespace:
                    continue
                if (meta.get("labels") or {}).get("kubernetes.io/service-name") != name:
                    continue
                ports = [p["port"] for p in piece.get("ports") or [] if p.get("name") == port_name]
                for address in piece.get("endpoints") or []:
                    target_ref = address.get("targetRef") or {}
                    labels = {
                        "namespace": namespace,
                        "service": name,
                        "endpoint": port_name,
                        "job": name,
                    }
                    if target_ref.get("kind") == "Pod":
                        labels["pod"] = target_ref["name"]
                    for ip in address.get("addresses") or []:
                        for port in ports:
                            found.append({"targets": [f"{ip}:{port}"], "labels": labels})
        groups.append(sorted(found, key=lambda group: group["targets"][0]))
    return groups


def build_servicemonitor_scrape_configs(
    monitor: Mapping[str, Any], target_files: Sequence[pathlib.Path]
) -> list[dict[str, Any]]:
    """One scrape job per endpoint of `monitor`, reading its targets from the file
    `ServiceMonitorDiscovery` keeps current (`target_files[i]` for endpoint i)."""
    configs = []
    for index, endpoint in enumerate(monitor["spec"]["endpoints"]):
        config: dict[str, Any] = {
            "job_name": f"serviceMonitor/{monitor['metadata'].get('namespace', 'default')}"
            f"/{monitor['metadata']['name']}/{index}",
            "honor_labels": bool(endpoint.get("honorLabels", False)),
            "metrics_path": endpoint.get("path", "/metrics"),
            "scheme": endpoint.get("scheme", "http"),
            "file_sd_configs": [{"files": [str(target_files[index])], "refresh_interval": "1s"}],
        }
        for key, field in (("interval", "scrape_interval"), ("scrapeTimeout", "scrape_timeout")):
            if key in endpoint:
                config[field] = endpoint[key]
        configs.append(config)
    return configs


class ServiceMonitorDiscovery:
    """Kubernetes service discovery for a ServiceMonitor, done by the harness (Debian's
    Prometheus is built without it): every `interval` seconds `list_objects(namespace)`
    (Services and EndpointSlices) is translated by `build_servicemonitor_targets` into
    one file_sd file per endpoint, which Prometheus re-reads; so scraping follows the
    Service's pods through rollouts as Kubernetes discovery would."""

    def __init__(
        self,
        monitor: Mapping[str, Any],
        list_objects: Callable[[str], Sequence[Mapping[str, Any]]],
        workdir: pathlib.Path,
        *,
        interval: float = 1.0,
    ) -> None:
        self.monitor = monitor
        self.list_objects = list_objects
        self.interval = interval
        count = len(monitor["spec"]["endpoints"])
        self.files = [workdir / f"servicemonitor-{index}.json" for index in range(count)]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def scrape_configs(self) -> list[dict[str, Any]]:
        return build_servicemonitor_scrape_configs(self.monitor, self.files)

    def refresh(self) -> None:
        namespace = self.monitor["metadata"].get("namespace", "default")
        names = self.monitor["spec"].get("namespaceSelector", {}).get("matchNames") or [namespace]
        objects = [o for name in names for o in self.list_objects(name)]
        for path, groups in zip(
            self.files, build_servicemonitor_targets(self.monitor, objects), strict=True
        ):
            text = json.dumps(groups, indent=1, sort_keys=True)
            if not path.exists() or path.read_text() != text:
                partial = path.with_suffix(".tmp")
                partial.write_text(text)
                partial.replace(path)

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="servicemonitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
            except Exception as e:  # kept for the test to see; the last file stays
                self.error = e

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None


class Prometheus:
    def __init__(
        self,
        targets: Sequence[str] = (),
        *,
        job: str = "imageward",
        scrape_interval: str = "1s",
        rule_files: Sequence[pathlib.Path] = (),
        workdir: pathlib.Path | None = None,
        scrape_configs: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """`targets`: scraped as job `job`; `scrape_configs`: further jobs as they are."""
        self._own_workdir = workdir is None
        self.workdir = workdir or pathlib.Path(tempfile.mkdtemp(prefix="imageward-prom-"))
        self.targets = list(targets)
        self.scrape_configs = [dict(config) for config in scrape_configs]
        self.job = job
        self.scrape_interval = scrape_interval
        self.rule_files = list(rule_files)
        self.port = 0
        self._process: processes.ManagedProcess | None = None

    def __enter__(self) -> Prometheus:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        config = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [
                *(
                    [{"job_name": self.job, "static_configs": [{"targets": self.targets}]}]
                    if self.targets
                    else []
                ),
                *self.scrape_configs,
            ],
        }
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.port = processes.free_port()
        self._process = processes.ManagedProcess(
            "prometheus",
            [
                str(tools.find("prometheus")),
                f"--config.file={config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
            ],
            log_dir=self.workdir / "logs",
        )
        self._process.start()
        try:
            processes.wait_for_http(
                f"{self.url}/-/ready", timeout=30, expect_status=200, process=self._process
            )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; returns `data`, raises PrometheusError with Prometheus' error."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as e:
            body = json.load(e)
            e.close()
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expression: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expression)
        result: list[dict[str, Any]] = data["result"]
        return result

    def wait_for_scrape(self, *, timeout: float = 30) -> None:
        """Wait until every target has been scraped successfully once."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            up = self.query(f'up{{job="{self.job}"}}')
            if len(up) == len(self.targets) and all(s["value"][1] == "1" for s in up):
                return
            time.sleep(0.3)
        raise PrometheusError(f"targets {self.targets} not scraped within {timeout:.0f}s")
