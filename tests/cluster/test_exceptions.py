"""ImagePolicyExceptions through the real webhook and the background scanner: honoured in
their own namespace only, until they expire, never for a policy that forbids them, and
every use recorded (warning, Event, metric, `skip` in the PolicyReport)."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
from typing import Any

import pytest

from imageward.localcluster import controlplane, images, registries
from tests import utils
from tests.cluster import helpers
from tests.cluster.test_reports import REACTION, results_for
from tests.conftest import RunningOperator

pytestmark = pytest.mark.cluster


@pytest.fixture
def prefix() -> str:
    return f"exc{helpers.uid()}"


def exception(
    name: str,
    namespace: str,
    policy: str,
    images_: list[str],
    *,
    seconds: float = 3600,
    **spec: Any,
) -> dict[str, Any]:
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)
    return {
        "apiVersion": "imageward.io/v1alpha1",
        "kind": "ImagePolicyException",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "policies": [{"name": policy}],
            "images": images_,
            "reason": "vendor image, ticket SEC-42",
            "expires": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            **spec,
        },
    }


def dry_run(
    cluster: controlplane.ControlPlane, namespace: str, name: str, image: str
) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "--dry-run=server",
        "-f",
        "-",
        input=json.dumps(helpers.pod(name, image)),
        check=False,
    )


def _applied_total(operator: RunningOperator, policy: str) -> float:
    pattern = re.compile(
        r'^imageward_policy_exceptions_applied_total\{policy="' + re.escape(policy) + r'"\} (\S+)$',
        re.M,
    )
    found = pattern.search(operator.metrics())
    return float(found.group(1)) if found else 0.0


def test_an_exception_admits_in_its_namespace_until_it_expires(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    imageward_operator: RunningOperator,
    prefix: str,
) -> None:
    image, _ = helpers.push(anonymous, images.root_image(f"x-{helpers.uid()}"), prefix=prefix)
    name = policies.apply([f"{anonymous.host}/{prefix}/**"], {"forbidRootUser": True})
    refused = helpers.create(cluster, namespace, helpers.pod("before", image))
    assert refused.returncode != 0 and "runs as root" in refused.stderr

    # The ServiceAccounts of the namespace were granted nothing by the chart.
    can = cluster.kubectl(
        "auth",
        "can-i",
        "create",
        "imagepolicyexceptions.imageward.io",
        "-n",
        namespace,
        f"--as=system:serviceaccount:{namespace}:default",
        check=False,
    )
    assert can.stdout.strip() == "no"

    lifetime = 40.0
    cluster.apply(
        exception("legacy", namespace, name, [f"{anonymous.host}/{prefix}/**"], seconds=lifetime)
    )
    started = datetime.datetime.now(datetime.UTC)
    utils.wait_for(
        "the exception to be honoured",
        lambda: dry_run(cluster, namespace, "probe", image).returncode == 0,
        timeout=20,
    )
    before = _applied_total(imageward_operator, name)
    admitted = helpers.create(cluster, namespace, helpers.pod("app", image))
    assert admitted.returncode == 0, admitted.stderr
    assert (
        f"ImagePolicyException {namespace}/legacy waives ImagePolicy {name} (forbidRootUser) "
        f"for {image} until"
    ) in admitted.stderr
    assert "vendor image, ticket SEC-42" in admitted.stderr
    assert _applied_total(imageward_operator, name) == before + 1

    def event() -> bool:
        events = cluster.get_json(
            "events", "-n", namespace, "--field-selector", "involvedObject.name=legacy"
        )["items"]
        return any(e["reason"] == "ImagePolicyExceptionApplied" for e in events)

    utils.wait_for("an Event on the exception", event, timeout=20)

    def skipped() -> dict[str, Any] | None:
        for r in results_for(cluster, namespace, "app", name):
            if r["result"] == "skip":
                return r
        return None

    result = utils.wait_for("a skip result naming the exception", skipped, timeout=REACTION)
    assert result["rule"] == "forbidRootUser"
    assert result["properties"]["exception"] == "legacy"
    assert f"waived by ImagePolicyException {namespace}/legacy" in result["message"]

    def state() -> str | None:
        status = cluster.get_json("ipolex", "legacy", "-n", namespace).get("status") or {}
        return status.get("state")

    utils.wait_for("the exception Active", lambda: state() == "Active", timeout=REACTION)

    # After it expires: refused again at once (decided at admission time), and the scan
    # reports the running pod as failing.
    remaining = lifetime - (datetime.datetime.now(datetime.UTC) - started).total_seconds()
    utils.wait_for(
        "the exception to expire",
        lambda: dry_run(cluster, namespace, "probe", image).returncode != 0,
        timeout=remaining + 15,
    )
    refused = helpers.create(cluster, namespace, helpers.pod("after", image))
    assert refused.returncode != 0
    assert "runs as root" in refused.stderr
    assert f"ImagePolicyException {namespace}/legacy expired at" in refused.stderr
    utils.wait_for("the exception Expired", lambda: state() == "Expired", timeout=REACTION)
    utils.wait_for(
        "the running pod to fail in the report",
        lambda: any(r["result"] == "fail" for r in results_for(cluster, namespace, "app", name)),
        timeout=REACTION,
    )


def test_an_exception_in_another_namespace_has_no_effect(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    prefix: str,
) -> None:
    image, _ = helpers.push(anonymous, images.root_image(f"o-{helpers.uid()}"), prefix=prefix)
    name = policies.apply([f"{anonymous.host}/{prefix}/**"], {"forbidRootUser": True})
    other = f"t-{helpers.uid()}"
    cluster.create_namespace(other)
    try:
        cluster.apply(exception("everything", other, name, ["**"]))
        # It does apply in its own namespace (so it was seen), never in ours.
        utils.wait_for(
            "the exception to be honoured in its namespace",
            lambda: dry_run(cluster, other, "probe", image).returncode == 0,
            timeout=20,
        )
        refused = helpers.create(cluster, namespace, helpers.pod("app", image))
        assert refused.returncode != 0 and "runs as root" in refused.stderr
        assert "ImagePolicyException" not in refused.stderr
    finally:
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_a_policy_that_forbids_exceptions_ignores_them(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    prefix: str,
) -> None:
    image, _ = helpers.push(anonymous, images.root_image(f"f-{helpers.uid()}"), prefix=prefix)
    scope = [f"{anonymous.host}/{prefix}/**"]
    strict = policies.apply(scope, {"forbidRootUser": True}, allowExceptions=False)
    cluster.apply(exception("please", namespace, strict, scope))

    def refused_naming_it() -> str | None:
        result = dry_run(cluster, namespace, "app", image)
        text = result.stderr
        return text if result.returncode != 0 and "is not honoured" in text else None

    text = utils.wait_for(
        "a refusal saying the exception is ignored", refused_naming_it, timeout=20
    )
    assert f"ImagePolicy {strict} sets allowExceptions: false" in text

    def status_says_so() -> bool:
        status = cluster.get_json("ipolex", "please", "-n", namespace).get("status") or {}
        return "sets allowExceptions: false, ignored" in status.get("message", "")

    utils.wait_for("the exception's status to say it is ignored", status_says_so, timeout=REACTION)
