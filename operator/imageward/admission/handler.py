"""What the two admission endpoints decide, from a checked AdmissionReview request.

`validate` refuses or admits (with warnings, Events for Warn and Audit); `pin` only
pins admitted images to their digests (refusals are the validating webhook's, which
sees the pinned pod). A pod that arrives at `validate` without a pin its check calls
for is refused: the mutating webhook's check, a moment earlier, saw another verdict
(or did not run), and a pod admitted by tag runs whatever the tag names at pull time.
Both return an `Answer`; `endpoints` turns it into the
AdmissionReview response. Effects (registry lookups, Events, metrics) go through the
`Runtime`; nothing here touches HTTP.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections.abc import Sequence
from typing import Any

from imageward import checker, constants, errors, metrics, runtime
from imageward.admission import messages, patches, reviews, webhooks, workloads
from imageward.exceptions import evaluate as exceptions_evaluate
from imageward.exceptions import model as exceptions_model
from imageward.policy import evaluate, selectors

#: Subresources whose writes can bring an image: the object itself and ephemeral
#: containers (`kubectl debug`). Status, scale, binding... never do.
_CHECKED_SUBRESOURCES = frozenset({"", "ephemeralcontainers"})


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    allowed: bool
    code: int = 200
    message: str = ""
    warnings: tuple[str, ...] = ()
    patch: tuple[patches.ReplaceOperation, ...] = ()

    def to_response(self, uid: str) -> dict[str, Any]:
        """The `response` of an AdmissionReview (admission.k8s.io/v1)."""
        response: dict[str, Any] = {"uid": uid, "allowed": self.allowed}
        if not self.allowed:
            response["status"] = {"code": self.code, "message": self.message}
        if self.warnings:
            response["warnings"] = list(self.warnings)
        if self.patch:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(
                json.dumps(list(self.patch), separators=(",", ":")).encode()
            ).decode()
        return response


ALLOW = Answer(allowed=True)


def _deny(message: str, code: int) -> Answer:
    return Answer(allowed=False, code=code, message=message)


async def validate(state: runtime.Runtime, request: reviews.AdmissionRequest) -> Answer:
    """The validating webhook: refuse what the policies refuse, say what they warn of."""
    started = time.monotonic()
    decision_label = "allow"
    try:
        answer = await _validate(state, request)
        if not answer.allowed:
            decision_label = "deny"
        elif answer.warnings:
            decision_label = "warn"
        return answer
    except Exception:
        decision_label = "error"
        raise
    finally:
        metrics.observe_admission(
            request["resource"]["resource"],
            request["operation"],
            decision_label,
            time.monotonic() - started,
        )


async def _validate(state: runtime.Runtime, request: reviews.AdmissionRequest) -> Answer:
    view = _view(state, request)
    if isinstance(view, Answer):
        return view
    if view is None:
        return ALLOW
    outcome = await state.check_view(view)
    decision = outcome.decision
    uses = [use for image in outcome.images for use in image.exceptions]
    warnings = (
        *messages.build_warnings(decision),
        *dict.fromkeys(exceptions_evaluate.build_message(use) for use in uses),
    )
    if decision.allowed and _pins_in_mutation(state, request):
        # The mutating webhook pinned what its own check admitted; a verdict that turned
        # between the two calls (a signature pushed, a cache entry expired) would let
        # the pod in by tag, and the tag be pulled after it has moved.
        try:
            unpinned = _pin_operations(view, outcome, request)
        except errors.InvalidReferenceError as e:
            return _deny(f"imageward: cannot pin: {e}", 400)
        if unpinned:
            return Answer(
                allowed=False,
                code=403,
                message=messages.build_unpinned_message(
                    view, unpinned, state.settings.admission.mutating_configuration
                ),
                warnings=warnings,
            )
    if not request["dryRun"] and (decision.audits or decision.warned):
        _post_events(state, view, decision)
    if not request["dryRun"] and uses:
        _record_exception_uses(state, view, uses)
    if not decision.allowed:
        return Answer(
            allowed=False,
            code=403,
            message=messages.build_refusal_message(decision, kind=view.kind, name=view.name or ""),
            warnings=warnings,
        )
    return Answer(allowed=True, warnings=warnings) if warnings else ALLOW


async def pin(state: runtime.Runtime, request: reviews.AdmissionRequest) -> Answer:
    """The mutating webhook: pin each new image a pinDigest policy admits to its digest."""
    if not any(p.policy is not None and p.policy.pin_digest for p in state.store.snapshot()):
        return ALLOW  # no policy pins: nothing to do, and no registry lookups twice per pod
    view = _view(state, request)
    if view is None or isinstance(view, Answer):
        # A malformed object is refused by the validating webhook, with its reason.
        return ALLOW
    outcome = await state.check_view(view)
    if not outcome.decision.allowed:
        return ALLOW
    try:
        operations = _pin_operations(view, outcome, request)
    except errors.InvalidReferenceError as e:
        return _deny(f"imageward: cannot pin: {e}", 400)
    return Answer(allowed=True, patch=tuple(operations)) if operations else ALLOW


def _pins_in_mutation(state: runtime.Runtime, request: reviews.AdmissionRequest) -> bool:
    """Whether the mutating webhook saw this request first and pinned what it admitted:
    one is configured (a name), and it is sent this resource."""
    return bool(state.settings.admission.mutating_configuration) and (
        request["resource"]["resource"] in webhooks.MUTATED_RESOURCES
    )


def _pin_operations(
    view: workloads.PodView, outcome: checker.Outcome, request: reviews.AdmissionRequest
) -> list[patches.ReplaceOperation]:
    """The pins `outcome` calls for in the containers the request brings (all of a
    CREATE's; those an UPDATE adds or changes). Raises errors.InvalidReferenceError."""
    pins = {item.image: item.pin for item in outcome.images if item.pin}
    if not pins:
        return []
    old = request["oldObject"] if request["operation"] == "UPDATE" else None
    new = workloads.build_new_containers(old, view, view.kind)
    return patches.build_pin_patch(view, pins, only=new)


def _view(
    state: runtime.Runtime, request: reviews.AdmissionRequest
) -> workloads.PodView | Answer | None:
    """The pod (template) to check; None when nothing new needs checking; an Answer
    refusing a malformed object."""
    if request["subResource"] not in _CHECKED_SUBRESOURCES:
        return None
    body = request["object"]
    if body is None or request["operation"] not in ("CREATE", "UPDATE"):
        return None
    kind = request["kind"]["kind"] or None
    try:
        view = workloads.parse_pod_view(body, kind=kind)
    except errors.MalformedObjectError as e:
        return _deny(f"imageward: {e}", 400)
    old_body = request["oldObject"]
    if request["operation"] != "UPDATE" or old_body is None:
        return view
    try:
        old = workloads.parse_pod_view(old_body, kind=view.kind)
    except errors.MalformedObjectError:
        return view  # check rather than skip
    if workloads.images_changed_between(old, view) or _enters_a_policy(state, old, view):
        return view
    return None


def _enters_a_policy(
    state: runtime.Runtime, old: workloads.PodView, view: workloads.PodView
) -> bool:
    """Whether an UPDATE that runs no new image relabels the pod (template) into the
    podSelector of a policy its old labels were outside: a pod created as `tier: web`
    with an image a `tier: payments` policy refuses must not become `tier: payments`
    (and take that Service's traffic) by `kubectl label`. Any other label change is
    left alone, so controllers relabelling pods admitted under older policies are not
    stopped by a check they did not ask for."""
    if old.labels == view.labels:
        return False
    before, after = old.pod_labels, view.pod_labels
    return any(
        selectors.evaluate_label_selector(loaded.match.pod_selector, after)
        and not selectors.evaluate_label_selector(loaded.match.pod_selector, before)
        for loaded in state.store.snapshot()
    )


def _post_events(
    state: runtime.Runtime, view: workloads.PodView, decision: evaluate.Decision
) -> None:
    if not view.namespace or not view.name:
        return
    involved = {"kind": view.kind, "name": view.name, "namespace": view.namespace}
    events: Sequence[tuple[str, str]] = [
        *(("ImagePolicyAudit", v.message) for v in decision.audits),
        *(("ImagePolicyWarning", w) for w in decision.warnings),
    ]
    for reason, message in events:
        state.post_event(
            namespace=view.namespace, involved=involved, reason=reason, message=message
        )


def _record_exception_uses(
    state: runtime.Runtime, view: workloads.PodView, uses: Sequence[exceptions_evaluate.Use]
) -> None:
    """Every use of an exception leaves an Event on the exception (so its owner and
    whoever granted it see each use) and counts in the metric (per image and policy)."""
    what = f"{view.kind} {view.name}" if view.name else view.kind
    for use in uses:
        if use.state == "applied":
            metrics.policy_exceptions_applied.labels(policy=use.policy).inc()
        state.post_event(
            namespace=use.namespace,
            involved={
                "apiVersion": constants.API_VERSION,
                "kind": exceptions_model.KIND,
                "name": use.name,
                "namespace": use.namespace,
            },
            reason={
                "applied": "ImagePolicyExceptionApplied",
                "expired": "ImagePolicyExceptionExpired",
                "forbidden": "ImagePolicyExceptionNotAllowed",
            }[use.state],
            message=f"{what}: {exceptions_evaluate.build_message(use)}",
            type_="Normal" if use.state == "applied" else "Warning",
        )
