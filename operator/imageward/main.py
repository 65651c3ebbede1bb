"""Every Kopf handler of imageward, and nothing else: each one is a thin call into a
plain module (style.md). Decisions live in `policy/`, `admission/`, `signatures/`,
`prepull/`; effects in `runtime`, `serving`, `kube`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
import tempfile
import time
from typing import Any

import kopf

from imageward import constants, errors, metrics, runtime, serving, webhooks
from imageward import settings as imageward_settings
from imageward.admission import messages, patches, workloads
from imageward.admission import server as admission_server
from imageward.policystore import LoadedPolicy
from imageward.prepull import controller as prepull_controller
from imageward.prepull import model as prepull_model

logger = logging.getLogger(__name__)


_POLICY = (constants.GROUP, constants.VERSION, constants.IMAGEPOLICY_PLURAL)
_WORKLOADS = (
    ("", "v1", "pods"),
    ("apps", "v1", "deployments"),
    ("apps", "v1", "replicasets"),
    ("apps", "v1", "statefulsets"),
    ("apps", "v1", "daemonsets"),
    ("batch", "v1", "jobs"),
    ("batch", "v1", "cronjobs"),
)


def _runtime(memo: kopf.Memo) -> runtime.Runtime:
    value: runtime.Runtime = memo["runtime"]
    return value


# -- start-up and shutdown ---------------------------------------------------------------


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # Kopf's own readers: in-cluster ServiceAccount first, then KUBECONFIG (read when
    # called, unlike the kubernetes client which fixes its default path at import).
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # `imageward run` passes its settings in the memo; `kopf run -m imageward.main` does not.
    config: imageward_settings.Settings = memo.get("settings") or imageward_settings.from_env()
    # Handler log lines are not Events (Kopf >= 1.44); Events are posted on purpose only.
    settings.posting.level = logging.WARNING
    settings.persistence.finalizer = "imageward.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="imageward.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="imageward.io", key="last-handled-configuration"
    )
    settings.peering.name = "imageward"
    settings.peering.mandatory = False
    settings.watching.server_timeout = 300

    state = runtime.Runtime.build(config)
    memo["runtime"] = state
    # Policies first: the webhook must not answer before it knows them (no fail-open
    # window after a restart).
    resource_version = await state.load_all_policies()
    logger.info("loaded %d ImagePolicies", len(state.store.snapshot()))
    memo["policy_task"] = asyncio.create_task(state.follow_policies(resource_version))

    material = await serving.obtain_material(config, state.kube)
    cert_dir = tempfile.mkdtemp(prefix="imageward-tls-")
    certfile, keyfile, _cafile = material.write(pathlib.Path(cert_dir))
    settings.admission.server = admission_server.WebhookServer(
        addr=config.admission.host,
        port=config.admission.port,
        certfile=str(certfile),
        pkeyfile=str(keyfile),
        file_check_interval=5.0,  # reload renewed certificates within seconds
    )
    if not config.admission.cert_dir:
        await serving.apply_configurations(config, state.kube, material.ca_cert_pem)
        memo["tls_task"] = asyncio.create_task(
            serving.keep_current(config, state.kube, pathlib.Path(cert_dir), material)
        )
    if config.metrics_port:
        metrics.start_http_server(config.metrics_port)
        logger.info("metrics on :%d/metrics", config.metrics_port)


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    for name in ("tls_task", "policy_task"):
        task = memo.get(name)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    state = memo.get("runtime")
    if state is not None:
        await state.close()


# -- ImagePolicy -------------------------------------------------------------------------


def _ready_condition(loaded: LoadedPolicy) -> dict[str, Any]:
    if loaded.usable:
        status, reason = "True", "Valid"
        message = "policy is in force"
    else:
        status, reason = "False", "InvalidPolicy"
        message = f"{loaded.reason}; images it matches are refused"
    return {
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": loaded.generation,
    }


@kopf.on.resume(*_POLICY)
@kopf.on.create(*_POLICY)
@kopf.on.update(*_POLICY, field="spec")
async def policy_changed(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    loaded = await _runtime(memo).load_policy(body)
    _write_policy_status(body, patch, loaded)


def _write_policy_status(body: kopf.Body, patch: kopf.Patch, loaded: LoadedPolicy) -> None:
    condition = _ready_condition(loaded)
    current = [
        c for c in (body.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"
    ]
    if current and all(current[0].get(k) == v for k, v in condition.items()):
        return
    condition["lastTransitionTime"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    patch.status["conditions"] = [condition]
    patch.status["observedGeneration"] = loaded.generation


@kopf.timer(*_POLICY, interval=15.0, initial_delay=15.0, idle=None)
async def policy_refresh(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    # Key material in Secrets / ConfigMaps can change without the policy changing. Only
    # policies that reference some (or could not be loaded) are read again.
    state = _runtime(memo)
    current = state.store.get(body["metadata"]["name"])
    if current is not None and current.usable and not _references_objects(body):
        return
    loaded = await state.load_policy(body)
    _write_policy_status(body, patch, loaded)


def _references_objects(body: kopf.Body) -> bool:
    rules = (body.get("spec") or {}).get("rules") or {}
    authorities = list((rules.get("signatures") or {}).get("authorities") or [])
    for entry in rules.get("attestations") or []:
        if isinstance(entry, dict):
            authorities += entry.get("authorities") or []
    return any(
        (a.get("key") or {}).get("secretRef") or (a.get("keyless") or {}).get("trustedRoot")
        for a in authorities
        if isinstance(a, dict)
    )


@kopf.on.delete(*_POLICY, optional=True)
async def policy_deleted(name: str, memo: kopf.Memo, **_: Any) -> None:
    _runtime(memo).store.remove(name)


# -- TLS renewal -------------------------------------------------------------------------


# -- admission ---------------------------------------------------------------------------


async def _check(
    *,
    body: kopf.Body,
    old: Any,
    operation: str | None,
    subresource: str | None,
    resource: kopf.Resource,
    memo: kopf.Memo,
    warnings: list[str],
    dryrun: bool,
    mutate: kopf.Patch | None,
    record: bool = True,
) -> None:
    started = time.monotonic()
    kind = body.get("kind") or ""
    decision_label = "allow"
    try:
        if subresource not in (None, "", "ephemeralcontainers"):
            return
        try:
            view = workloads.parse_pod_view(body, kind=kind or None)
        except errors.MalformedObjectError as e:
            decision_label = "deny"
            raise kopf.AdmissionError(f"imageward: {e}", code=400) from e
        if (
            operation == "UPDATE"
            and old is not None
            and not workloads.images_changed(old, body, kind)
        ):
            return
        state = _runtime(memo)
        outcome = await state.check_view(view)
        decision = outcome.decision
        decision_label = decision.outcome
        warnings.extend(messages.build_warnings(decision))
        if not dryrun and (decision.audits or decision.warned):
            _post_events(state, view, decision)
        if not decision.allowed:
            raise kopf.AdmissionError(
                messages.build_refusal_message(decision, kind=view.kind, name=view.name or ""),
                code=403,
            )
        if mutate is not None:
            pins = {item.image: item.pin for item in outcome.images if item.pin}
            new = workloads.build_new_containers(old if operation == "UPDATE" else None, view, kind)
            ops = patches.build_pin_patch(view, pins, only=new)
            if ops:
                mutate.fns.append(lambda raw: _apply_ops(raw, ops))
    except kopf.AdmissionError:
        if decision_label == "allow":
            decision_label = "deny"
        raise
    except Exception:
        decision_label = "error"
        raise
    finally:
        if record:
            metrics.observe_admission(
                resource.plural, operation or "", decision_label, time.monotonic() - started
            )


def _apply_ops(raw: Any, ops: list[Any]) -> None:
    import jsonpatch

    jsonpatch.apply_patch(raw, ops, in_place=True)


def _post_events(state: runtime.Runtime, view: workloads.PodView, decision: Any) -> None:
    if not view.namespace or not view.name:
        return
    involved = {"kind": view.kind, "name": view.name, "namespace": view.namespace}
    for violation in decision.audits:
        state.post_event(
            namespace=view.namespace,
            involved=involved,
            reason="ImagePolicyAudit",
            message=violation.message,
        )
    for warning in decision.warnings:
        state.post_event(
            namespace=view.namespace,
            involved=involved,
            reason="ImagePolicyWarning",
            message=warning,
        )


def _register_admission() -> None:
    for group, version, plural in _WORKLOADS:
        resource = (group, version, plural) if group else (version, plural)

        @kopf.on.validate(*resource, id=webhooks.VALIDATE_ID, subresource="*")
        async def validate(
            *,
            body: kopf.Body,
            subresource: str | None,
            resource: kopf.Resource,
            memo: Any,
            warnings: list[str],
            dryrun: bool,
            **kwargs: Any,
        ) -> None:
            await _check(
                body=body,
                old=kwargs.get("old"),
                operation=kwargs.get("operation"),
                subresource=subresource,
                resource=resource,
                memo=memo,
                warnings=warnings,
                dryrun=dryrun,
                mutate=None,
            )


_register_admission()


@kopf.on.mutate(
    "v1", "pods", id=webhooks.PIN_DIGEST_ID, operations=["CREATE", "UPDATE"], subresource="*"
)
async def pin_digest(
    *,
    body: kopf.Body,
    patch: kopf.Patch,
    subresource: str | None,
    resource: kopf.Resource,
    memo: Any,
    warnings: list[str],
    dryrun: bool,
    **kwargs: Any,
) -> None:
    # Refusals belong to the validating webhook, which sees the final (pinned) pod; this
    # one only pins. A refusal here would be reported twice.
    if not any(
        p.policy is not None and p.policy.pin_digest for p in _runtime(memo).store.snapshot()
    ):
        return  # no policy pins: nothing to do, and no registry lookups twice per pod
    try:
        await _check(
            body=body,
            old=kwargs.get("old"),
            operation=kwargs.get("operation"),
            subresource=subresource,
            resource=resource,
            memo=memo,
            warnings=[],
            dryrun=True,  # no Events from the pinning pass: validation posts them
            mutate=patch,
            record=False,
        )
    except kopf.AdmissionError:
        return


# -- PrePull -------------------------------------------------------------------------------

_PREPULL = (constants.GROUP, constants.VERSION, constants.PREPULL_PLURAL)
_PROGRESS_INTERVAL = 5.0  # seconds between node-progress refreshes of each PrePull
# `imageward.io/paused: "true"` stops reconciling a PrePull (what it made stays as it is),
# e.g. while someone investigates a node; remove the annotation to resume.
_NOT_PAUSED = {constants.ANNOTATION_PAUSED: kopf.ABSENT}


def _patch_status(body: kopf.Body, patch: kopf.Patch, fields: dict[str, Any]) -> None:
    current = body.get("status") or {}
    for key, value in fields.items():
        if current.get(key) != value:
            patch.status[key] = value


@kopf.on.resume(*_PREPULL, annotations=_NOT_PAUSED)
@kopf.on.create(*_PREPULL, annotations=_NOT_PAUSED)
@kopf.on.update(*_PREPULL, field="spec", annotations=_NOT_PAUSED)
async def prepull_changed(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    fields = await prepull_controller.reconcile(
        _runtime(memo), body, previous_status=body.get("status") or {}
    )
    _patch_status(body, patch, fields)


@kopf.timer(
    *_PREPULL,
    interval=_PROGRESS_INTERVAL,
    initial_delay=_PROGRESS_INTERVAL,
    idle=None,
    annotations=_NOT_PAUSED,
)
async def prepull_progress(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    state = _runtime(memo)
    previous = body.get("status") or {}
    try:
        spec = prepull_model.parse_prepull(body)
    except prepull_model.PrePullError:
        return  # prepull_changed reported it; nothing runs until the spec is fixed
    if prepull_controller.refresh_due(spec.refresh_interval, previous.get("lastResolved")):
        fields = await prepull_controller.reconcile(state, body, previous_status=previous)
    else:
        fields = await prepull_controller.node_progress(
            state,
            body["metadata"]["name"],
            body["metadata"]["namespace"],
            spec,
            previous.get("images") or [],
            int(body["metadata"].get("generation") or 0),
            [],
            previous.get("conditions") or [],
        )
    _patch_status(body, patch, fields)


@kopf.on.delete(*_PREPULL, optional=True)
async def prepull_deleted(*, name: str, namespace: str | None, **_: Any) -> None:
    # The DaemonSet and ConfigMap are owned by the PrePull: the garbage collector removes them.
    prepull_controller.forget_metrics(namespace or "", name)
