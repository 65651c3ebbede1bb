"""Waive the violations an ImagePolicyException covers, for one image of one pod.

Pure, shared by admission (through the checker) and background scans (when a report
is built). An exception waives a violation only when all of these hold:

- it is in the pod's own namespace (nothing crosses namespaces, whatever it says);
- it is not being deleted and has not expired at `now` (the time of the decision, not
  of some timer: an expired exception stops applying at once);
- it names the violation's policy (and its rule, when it lists rules), and the policy is
  usable and allows exceptions (`spec.allowExceptions`, default true);
- the image matches one of its `images` globs (when it has some), sure of it (a tag
  glob never waives an image pinned by digest, whose tag the runtime ignores), and the
  pod's labels match its `podSelector` (when it has one; never without pod labels).

Every exception that would have applied but did not (expired, or the policy forbids
exceptions) is reported too, so that the reason is visible where the refusal is.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from imageward import records
from imageward.exceptions import model
from imageward.policy import evaluate, globs, selectors
from imageward.registry import model as registry_model

State = Literal["applied", "expired", "forbidden"]

#: Exceptions of one namespace considered per decision: more are ignored (in name order),
#: so a namespace's own flood of exceptions costs its pods, never the webhook.
MAX_PER_NAMESPACE = 256


@dataclasses.dataclass(frozen=True, slots=True)
class Use:
    """One exception and one policy, for one image: waived (with the violations it let
    off) or not honoured, and why."""

    namespace: str
    name: str
    policy: str
    image: str
    state: State
    reason: str
    expires: datetime.datetime
    waived: tuple[evaluate.Violation, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def rules(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v.rule for v in self.waived))


def build_time_text(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _selects(
    exception: model.PolicyException,
    reference: registry_model.ImageReference,
    pod_labels: Mapping[str, str] | None,
) -> bool:
    if exception.images is not None and not any(
        globs.evaluate_image_pattern(pattern, reference, when_unknown=False)
        for pattern in exception.images
    ):
        return False
    if exception.pod_selector is not None:
        if pod_labels is None:
            return False
        return selectors.evaluate_label_selector(exception.pod_selector, pod_labels)
    return True


def select_namespace(
    exceptions: Iterable[model.Parsed], namespace: str | None
) -> tuple[model.PolicyException, ...]:
    """The usable exceptions of one namespace, in name order, at most MAX_PER_NAMESPACE."""
    if not namespace:
        return ()
    found = sorted(
        (
            e
            for e in exceptions
            if isinstance(e, model.PolicyException) and e.namespace == namespace
        ),
        key=lambda e: e.name,
    )
    return tuple(found[:MAX_PER_NAMESPACE])


def apply_exceptions(
    results: Sequence[evaluate.PolicyResult],
    *,
    reference: registry_model.ImageReference,
    image: str,
    namespace: str | None,
    pod_labels: Mapping[str, str] | None,
    exceptions: Sequence[model.PolicyException],
    allows: Mapping[str, bool],
    now: datetime.datetime,
) -> tuple[list[evaluate.PolicyResult], list[Use]]:
    """The results with waived violations removed, and every exception use.

    `allows` maps each usable policy's name to its `allowExceptions`; a policy missing
    from it (one that could not be loaded) is never waived.
    """
    if not exceptions or not namespace:
        return list(results), []
    out: list[evaluate.PolicyResult] = []
    uses: list[Use] = []
    for result in results:
        if not result.violations or result.policy not in allows:
            out.append(result)
            continue
        candidates = [
            e
            for e in exceptions
            if e.namespace == namespace
            and not e.deleting
            and e.policy(result.policy) is not None
            and _selects(e, reference, pod_labels)
        ]
        if not candidates:
            out.append(result)
            continue
        if not allows[result.policy]:
            uses += [_use(e, result.policy, image, "forbidden") for e in candidates]
            out.append(result)
            continue
        remaining = list(result.violations)
        for exception in candidates:
            if exception.expired(now):
                uses.append(_use(exception, result.policy, image, "expired"))
                continue
            ref = exception.policy(result.policy)
            assert ref is not None
            waived = tuple(v for v in remaining if ref.covers(v.rule))
            if waived:
                remaining = [v for v in remaining if not ref.covers(v.rule)]
                uses.append(_use(exception, result.policy, image, "applied", waived))
        out.append(records.replace(result, violations=tuple(remaining)))
    return out, uses


def _use(
    exception: model.PolicyException,
    policy: str,
    image: str,
    state: State,
    waived: tuple[evaluate.Violation, ...] = (),
) -> Use:
    return Use(
        namespace=exception.namespace,
        name=exception.name,
        policy=policy,
        image=image,
        state=state,
        reason=exception.reason,
        expires=exception.expires,
        waived=waived,
    )


def build_message(use: Use) -> str:
    """The admission warning (and Event text) of one use."""
    where = f"ImagePolicyException {use.key}"
    if use.state == "applied":
        return (
            f"{where} waives ImagePolicy {use.policy} ({', '.join(use.rules)}) for {use.image} "
            f"until {build_time_text(use.expires)}: {use.reason}"
        )
    if use.state == "expired":
        return (
            f"{where} expired at {build_time_text(use.expires)}: it no longer waives "
            f"ImagePolicy {use.policy} for {use.image}"
        )
    return (
        f"{where} is not honoured: ImagePolicy {use.policy} sets allowExceptions: false "
        f"({use.image})"
    )
