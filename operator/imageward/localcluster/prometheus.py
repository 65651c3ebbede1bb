"""A real Prometheus (Debian's) scraping given targets, with a small query helper."""

from __future__ import annotations

import json
import pathlib
import shutil
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

import yaml

from imageward.localcluster import processes, tools


class PrometheusError(RuntimeError):
    pass


class Prometheus:
    def __init__(
        self,
        targets: Sequence[str],
        *,
        job: str = "imageward",
        scrape_interval: str = "1s",
        rule_files: Sequence[pathlib.Path] = (),
        workdir: pathlib.Path | None = None,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = workdir or pathlib.Path(tempfile.mkdtemp(prefix="imageward-prom-"))
        self.targets = list(targets)
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
                {"job_name": self.job, "static_configs": [{"targets": self.targets}]}
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
