"""Render charts/imageward with the real helm binary (no cluster), for the chart tests.

`tests/cluster/test_chart.py` uses the same helpers to apply what they render.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

from imageward import metrics
from imageward.localcluster import tools

ROOT = pathlib.Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "imageward"
ALL_ON = CHART / "ci" / "all-on-values.yaml"
CRDS = ROOT / "crds"
DASHBOARD = CHART / "dashboards" / "imageward.json"
ALERTS = CHART / "alerts" / "imageward-rules.yaml"

RELEASE = "imageward"
NAMESPACE = "imageward-system"

Manifest = dict[str, Any]


def helm(
    *args: str,
    check: bool = True,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(tools.find("helm")), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env=env,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
        )
    return result


def _template_args(
    values: Mapping[str, Any] | None,
    files: Sequence[pathlib.Path],
    release: str,
    namespace: str,
    include_crds: bool,
) -> tuple[list[str], str | None]:
    args = ["template", release, str(CHART), "--namespace", namespace]
    if include_crds:
        args.append("--include-crds")
    for path in files:
        args += ["--values", str(path)]
    # Values given last win; JSON is YAML, and `-f -` reads it from stdin.
    stdin = None
    if values is not None:
        args += ["--values", "-"]
        stdin = json.dumps(values)
    return args, stdin


def render(
    values: Mapping[str, Any] | None = None,
    *,
    files: Sequence[pathlib.Path] = (),
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    include_crds: bool = False,
) -> list[Manifest]:
    """`helm template` the chart; the manifests it prints, parsed."""
    args, stdin = _template_args(values, files, release, namespace, include_crds)
    output = helm(*args, stdin=stdin).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


def render_error(
    values: Mapping[str, Any] | None = None, *, files: Sequence[pathlib.Path] = ()
) -> str:
    """`helm template` must refuse these values: its error message."""
    args, stdin = _template_args(values, files, RELEASE, NAMESPACE, False)
    result = helm(*args, stdin=stdin, check=False)
    assert result.returncode != 0, f"helm template accepted {values!r}"
    return result.stderr


def find_all(manifests: Iterable[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def component_of(manifest: Manifest) -> str | None:
    labels: dict[str, str] = manifest["metadata"].get("labels") or {}
    return labels.get("app.kubernetes.io/component")


def find(manifests: Iterable[Manifest], kind: str, *, component: str | None = None) -> Manifest:
    """The one manifest of `kind`: the operator's, or with `component="agent"` the node
    agent's (its ServiceAccount, RBAC and DaemonSet carry that component label)."""
    found = [m for m in find_all(manifests, kind) if component_of(m) == component]
    assert len(found) == 1, f"expected one {kind} of component {component}, got {len(found)}"
    return found[0]


def env_of(deployment: Manifest) -> dict[str, Any]:
    """The operator container's env: name -> value (or the valueFrom mapping)."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def alert_rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    """Every PromQL expression of the dashboard, Grafana's interval variables set to 1m."""
    exprs = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            exprs.append(re.sub(r"\$__(rate_)?interval", "1m", target["expr"]))
    return exprs


def exported_series_names() -> set[str]:
    """The series names imageward's metrics registry exports (product.md's contract)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    return {
        family.name + suffix
        for family in metrics.REGISTRY.collect()
        for suffix in suffixes[family.type]
    }


def series_names_in(expression: str) -> set[str]:
    return set(re.findall(r"\bimageward_[a-z_]+\b", expression))
