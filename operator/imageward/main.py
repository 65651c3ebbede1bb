"""Every Kopf handler of imageward, and nothing else: each one is a thin call into a
plain module (style.md). Decisions live in `policy/`, `admission/`, `signatures/`,
`prepull/`; effects in `runtime`, `admission.serving`, `kube`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import pathlib
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import kopf

from imageward import constants, kube, metrics, runtime
from imageward import settings as imageward_settings
from imageward.admission import endpoints as admission_endpoints
from imageward.admission import process as admission_process
from imageward.admission import serving
from imageward.policystore import LoadedPolicy
from imageward.prepull import controller as prepull_controller
from imageward.reports import scanner as reports_scanner

logger = logging.getLogger(__name__)


#: What `start` puts in the memo.
_MEMO_KEYS = ("runtime", "policy_task", "tls_task", "admission_server")

_POLICY = (constants.GROUP, constants.VERSION, constants.IMAGEPOLICY_PLURAL)


def _runtime(memo: kopf.Memo) -> runtime.Runtime:
    value: runtime.Runtime = memo["runtime"]
    return value


# -- start-up and shutdown ---------------------------------------------------------------


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kube.login(**kwargs)


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
    settings.peering.name = config.peering_name
    settings.peering.mandatory = False
    settings.watching.server_timeout = 300

    try:
        state = runtime.Runtime.build(config)
        memo["runtime"] = state
        # Policies first: the webhook must not answer before it knows them (no fail-open
        # window after a restart).
        resource_version = await state.load_all_policies()
        logger.info("loaded %d ImagePolicies", len(state.store.snapshot()))
        memo["policy_task"] = asyncio.create_task(state.follow_policies(resource_version))

        material = await serving.obtain_material(config, state.kube)
        if config.admission.cert_dir:
            # cert-manager's files, served as they are so that its renewals are picked up.
            directory = pathlib.Path(config.admission.cert_dir)
            certfile, keyfile = directory / "tls.crt", directory / "tls.key"
        else:
            cert_dir = pathlib.Path(tempfile.mkdtemp(prefix="imageward-tls-"))
            certfile, keyfile, _cafile = material.write(cert_dir)
            await serving.apply_configurations(config, state.kube, material.ca_cert_pem)
            memo["tls_task"] = asyncio.create_task(
                serving.keep_current(config, state.kube, cert_dir, material)
            )
        server: admission_endpoints.Server | admission_process.AdmissionProcess
        if config.admission.process == "own":
            # Its own policy watches, loaded before it listens; see admission.worker.
            server = admission_process.AdmissionProcess(
                certfile=certfile,
                keyfile=keyfile,
                drain_seconds=config.admission.shutdown_drain,
                verbose=logging.getLogger().isEnabledFor(logging.DEBUG),
            )
        else:
            server = admission_endpoints.Server.for_settings(
                state, config.admission, certfile=certfile, keyfile=keyfile
            )
        await server.start()
        memo["admission_server"] = server
        if config.metrics_port:
            others = (
                server.metrics if isinstance(server, admission_process.AdmissionProcess) else None
            )
            metrics.start_http_server(config.metrics_port, others=others)
            logger.info("metrics on :%d/metrics", config.metrics_port)
    except BaseException:
        # Kopf retries a failed start-up from the top: leave nothing behind for it (no
        # second policy watch, no certificate renewer, no worker holding the port).
        await _stop_serving(memo)
        for key in _MEMO_KEYS:
            memo.pop(key, None)
        raise


@kopf.on.probe(id="admission")
def admission_probe(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    # The liveness endpoint answers 500 when a probe raises. The supervisor starts a
    # dead worker again within seconds; one that has not served for LIVENESS_GRACE has
    # the kubelet restart the container (after its failureThreshold).
    server = memo.get("admission_server")
    if not isinstance(server, admission_process.AdmissionProcess):
        return {"process": "shared"}
    down = server.down_for()
    if down > admission_process.LIVENESS_GRACE:
        raise kopf.PermanentError(
            f"the admission process has not served for {down:.0f}s "
            f"(started again {server.restarts} times)"
        )
    return {"process": "own", "pid": server.pid, "restarts": server.restarts, "down": down}


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    await _stop_serving(memo)


async def _stop_serving(memo: kopf.Memo) -> None:
    server = memo.get("admission_server")
    if server is not None:
        await server.stop()
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
    patch.status.update(build_policy_status(body.get("status") or {}, loaded))


def build_policy_status(current: Mapping[str, Any], loaded: LoadedPolicy) -> dict[str, Any]:
    """The status fields to write for a loaded policy; empty when its Ready condition
    already says so."""
    condition = _ready_condition(loaded)
    found = [c for c in current.get("conditions") or [] if c.get("type") == "Ready"]
    if found and all(found[0].get(k) == v for k, v in condition.items()):
        return {}
    condition["lastTransitionTime"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {"conditions": [condition], "observedGeneration": loaded.generation}


@kopf.daemon(*_POLICY, cancellation_timeout=5.0)
async def policy_follow(
    body: kopf.Body, name: str, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    # A policy is loaded again when key material it references changes (the runtime's
    # key-material follower, in every replica); this replica (the peering leader) then
    # writes the Ready condition if it changed. No timer: it sleeps until then.
    state = _runtime(memo)
    while not stopped:
        signal = state.policy_signal(name)
        waiter = asyncio.ensure_future(signal.wait())
        stopping = asyncio.ensure_future(stopped.wait())
        try:
            await asyncio.wait([waiter, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            stopping.cancel()
        if stopped:
            return
        signal.clear()
        loaded = state.store.get(name)
        if loaded is None:
            continue
        fields = build_policy_status(body.get("status") or {}, loaded)
        if fields:
            try:
                await state.kube.patch_cluster_custom_status(*_POLICY, name, {"status": fields})
            except kube.KubeError as e:  # logged; the next change writes again
                logger.warning("ImagePolicy %s: could not write status: %s", name, e)


@kopf.on.delete(*_POLICY, optional=True)
async def policy_deleted(name: str, memo: kopf.Memo, **_: Any) -> None:
    _runtime(memo).remove_policy(name)


# -- TLS renewal -------------------------------------------------------------------------


# -- admission ---------------------------------------------------------------------------
# Served by `admission.endpoints` (started above), not through Kopf: see that module.


# -- PrePull -------------------------------------------------------------------------------

_PREPULL = (constants.GROUP, constants.VERSION, constants.PREPULL_PLURAL)
# `imageward.io/paused: "true"` stops reconciling a PrePull (what it made stays as it is),
# e.g. while someone investigates a node; remove the annotation to resume.
_NOT_PAUSED = {constants.ANNOTATION_PAUSED: kopf.ABSENT}


def _prepull(memo: kopf.Memo) -> prepull_controller.PrePullState:
    value: prepull_controller.PrePullState = memo["prepull"]
    return value


@kopf.on.startup()
async def prepull_start(memo: kopf.Memo, **_: Any) -> None:
    # After `start` (handlers run in the order they are defined): it makes the runtime.
    state = prepull_controller.PrePullState(_runtime(memo))
    memo["prepull"] = state
    # Plans of PrePulls deleted while no operator watched are found and deleted.
    state.start_sweeping()


@kopf.on.cleanup()
async def prepull_stop(memo: kopf.Memo, **_: Any) -> None:
    state = memo.get("prepull")
    if state is not None:
        await state.close()


@kopf.on.resume(*_PREPULL, annotations=_NOT_PAUSED)
@kopf.on.create(*_PREPULL, annotations=_NOT_PAUSED)
@kopf.on.update(*_PREPULL, field="spec", annotations=_NOT_PAUSED)
async def prepull_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    # Reconciles and writes status itself (the follower below writes the later ones).
    await prepull_controller.changed(_prepull(memo), body)


@kopf.daemon(*_PREPULL, annotations=_NOT_PAUSED, cancellation_timeout=5.0)
async def prepull_follow(
    body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    # Status follows the watch-fed caches (DaemonSets, pods, agent reports, nodes): woken
    # by what concerns this PrePull, asleep otherwise; tags are re-resolved on schedule.
    stop = asyncio.Event()
    waiter = asyncio.ensure_future(stopped.wait())
    waiter.add_done_callback(lambda _: stop.set())
    try:
        await prepull_controller.follow(_prepull(memo), body, stop=stop)
    finally:
        waiter.cancel()


@kopf.on.event(*_PREPULL)
async def prepull_event(
    *, event: kopf.RawEvent, name: str, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    # Owner references cannot reach the operator's namespace: a Layers-mode plan is
    # deleted here when its PrePull goes (and by the sweep if no operator saw it go).
    if event.get("type") != "DELETED":
        return
    uid = (event.get("object") or {}).get("metadata", {}).get("uid")
    await prepull_controller.forget(_prepull(memo), namespace or "", name, uid)


# -- background scans, PolicyReports, ImagePolicyExceptions -------------------------------


def _scanner(memo: kopf.Memo) -> reports_scanner.Scanner:
    value: reports_scanner.Scanner = memo["scanner"]
    return value


@kopf.on.startup()
async def reports_start(memo: kopf.Memo, **_: Any) -> None:
    # After `start`. Every replica follows exceptions (both serve admission); only the
    # peering leader scans (the daemons below run only there).
    state = _runtime(memo)
    await state.exceptions.start(state.kube, max_items=state.settings.scan.cache_max_objects)
    memo["scanner"] = reports_scanner.Scanner(state)


@kopf.on.cleanup()
async def reports_stop(memo: kopf.Memo, **_: Any) -> None:
    scanner = memo.get("scanner")
    if scanner is not None:
        await scanner.close()


@kopf.daemon(*_POLICY, cancellation_timeout=30.0)
async def policy_scan_lease(
    name: str, stopped: kopf.DaemonStopped, memo: kopf.Memo, **_: Any
) -> None:
    # Kopf runs daemons only while this replica leads peering and stops them all when it
    # pauses: each policy's daemon holds a scanner lease for as long as it runs.
    scanner = _scanner(memo)
    await scanner.acquire(name)
    try:
        await stopped.wait()
    finally:
        reason = stopped.reason
        deleted = reason is not None and bool(reason & kopf.DaemonStoppingReason.RESOURCE_DELETED)
        await scanner.release(name, deleted=deleted)


# -- last of the start-up -----------------------------------------------------------------


@kopf.on.startup()
def freeze_startup_heap(**_: Any) -> None:
    # Defined last, so it runs after every other start-up handler. A full garbage
    # collection walks every object the collector tracks: the imported modules alone
    # (Kopf, the kubernetes client's pydantic models) make one take about 150 ms, on the
    # event loop's thread, whenever allocations trigger it; an admission review that
    # arrives meanwhile waits as long. What exists now lives as long as the process:
    # frozen, it is left out of every later collection.
    gc.collect()
    gc.freeze()
