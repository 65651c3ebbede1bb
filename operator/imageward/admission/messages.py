"""The texts a user sees in kubectl: the refusal message and admission warnings.

Refusals reach the user as `admission webhook "…" denied the request: <message>`, in
`kubectl apply` output or, for pods a controller creates, in the controller's Events
and conditions. One line per violation, sorted so that the same object always gets the
same text, capped at MAX_MESSAGE_BYTES so one pod with many images does not flood the
terminal (Kubernetes sets no limit of its own there).

Warnings become HTTP `Warning` headers, and the apiserver limits them
(k8s.io/apiserver/pkg/endpoints/filters/warning.go): once all warnings of a request,
from every source, pass 4096 runes (`truncateAtTotalRunes`) it cuts each to 256 runes
(`truncateItemRunes`) and drops what comes after, silently; a text with a control
character is dropped outright (`net.NewWarningHeader` refuses it). So each warning here
is at most 256 runes without control characters, and ours together stay within a budget
below 4096 that leaves room for the apiserver's own warnings and other webhooks', with
an explicit "and N more" instead of a silent cut.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from imageward import constants
from imageward.admission import patches, workloads
from imageward.policy import evaluate

MAX_MESSAGE_BYTES: Final = 4096
"""Cap on a refusal message, in UTF-8 bytes."""

MAX_LINE_CHARS: Final = 1024
"""Cap on one violation line: a registry error text can be long, the other lines matter too."""

WARNING_MAX_RUNES: Final = 256
"""The apiserver's `truncateItemRunes`."""

WARNINGS_MAX_TOTAL_RUNES: Final = 4096
"""The apiserver's `truncateAtTotalRunes`, for all warnings of one request."""

WARNINGS_BUDGET_RUNES: Final = WARNINGS_MAX_TOTAL_RUNES - 512
"""What imageward's warnings may use: 512 runes stay for deprecation warnings and other
webhooks, whose warnings would otherwise push ours into the apiserver's truncation."""

ELLIPSIS: Final = "…"

# Unicode category Cc (C0, DEL, C1) and Cs (lone surrogates: not encodable as UTF-8).
_UNCLEAN: Final = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")

# Rule order in messages: what the reference shows first, then sizes, user, signatures,
# and failed lookups last (they explain missing facts rather than a finding).
_RULE_ORDER: Final = {
    rule: rank
    for rank, rule in enumerate(
        (
            constants.RULE_ALLOWED_REGISTRIES,
            constants.RULE_FORBIDDEN_TAGS,
            constants.RULE_REQUIRE_DIGEST,
            constants.RULE_MAX_COMPRESSED_SIZE,
            constants.RULE_MAX_LAYERS,
            constants.RULE_MAX_LAYER_SIZE,
            constants.RULE_FORBID_ROOT_USER,
            constants.RULE_SIGNATURES,
            constants.RULE_LOOKUP,
        )
    )
}


def build_clean_text(text: str) -> str:
    """`text` on one line: control characters (newlines from a registry's error body,
    say) and lone surrogates become spaces, so a line stays a line and the apiserver
    does not drop a warning for them (Go's unicode.IsControl is exactly category Cc)."""
    return _UNCLEAN.sub(" ", text).strip()


def _truncate_chars(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: max(limit - len(ELLIPSIS), 0)] + ELLIPSIS


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def _truncate_bytes(text: str, limit: int) -> str:
    if _utf8_len(text) <= limit:
        return text
    room = max(limit - _utf8_len(ELLIPSIS), 0)
    # Cutting the bytes may split a character; "ignore" drops the partial one.
    return text.encode("utf-8")[:room].decode("utf-8", "ignore") + ELLIPSIS


def _sort_key(violation: evaluate.Violation) -> tuple[str, str, int, str]:
    return (
        violation.image,
        violation.policy,
        _RULE_ORDER.get(violation.rule, len(_RULE_ORDER)),
        violation.message,
    )


def build_violation_lines(violations: Iterable[evaluate.Violation]) -> list[str]:
    """One clean line per distinct violation, by image, policy, rule and text.

    The same image in two containers yields the same violation twice: shown once.
    """
    ordered = sorted(violations, key=_sort_key)
    # Cut before cleaning (which keeps lengths) so a huge text costs no more than a short one.
    lines = (
        _truncate_chars(build_clean_text(v.message[: MAX_LINE_CHARS + 1]), MAX_LINE_CHARS)
        for v in ordered
    )
    return list(dict.fromkeys(line for line in lines if line))


def build_refusal_message(
    decision: evaluate.Decision,
    *,
    kind: str,
    name: str,
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> str:
    """The message of a denied admission, e.g.

        Pod web: ImagePolicy prod-images: ghcr.io/acme/web:1.4 (sha256:9f2c…) is …

    for one violation, and for several a count on the first line and one violation per
    line after it, cut to `max_bytes` with a last line "and N more".
    """
    # The name comes from the object, so it gets the same cleaning as the violations.
    subject = build_clean_text(f"{kind} {name}" if name else kind)
    lines = build_violation_lines(decision.violations)
    if not lines:
        return _truncate_bytes(f"{subject}: refused by ImagePolicy", max_bytes)
    if len(lines) == 1:
        return _truncate_bytes(f"{subject}: {lines[0]}", max_bytes)
    header = f"{subject}: {len(lines)} ImagePolicy violations:"
    # Room for the longest possible trailer, so adding it never breaks the cap.
    reserve = _utf8_len(f"\nand {len(lines)} more")
    text = _truncate_bytes(header, max_bytes)
    shown = 0
    for line in lines:
        candidate = f"{text}\n{line}"
        remaining_after = len(lines) - shown - 1
        limit = max_bytes - (reserve if remaining_after else 0)
        if _utf8_len(candidate) <= limit:
            text = candidate
            shown += 1
            continue
        if shown == 0:
            # Never a header alone: cut the first violation to fit rather than show none.
            room = limit - _utf8_len(text) - 1
            if room > _utf8_len(ELLIPSIS):
                text = f"{text}\n{_truncate_bytes(line, room)}"
                shown = 1
        break
    if shown < len(lines):
        text += f"\nand {len(lines) - shown} more"
    return text


def build_warnings(
    decision: evaluate.Decision, *, budget: int = WARNINGS_BUDGET_RUNES
) -> list[str]:
    """Admission warnings the apiserver passes on whole.

    Each warning is cleaned of control characters and cut to WARNING_MAX_RUNES; they are
    de-duplicated and sorted (the same object always gets the same warnings), and when
    together they would pass `budget` runes the rest is summed up as "and N more
    ImagePolicy warnings". Python counts code points, which is what Go's runes are.
    """
    items = sorted(
        dict.fromkeys(
            _truncate_chars(text, WARNING_MAX_RUNES)
            for text in (
                build_clean_text(warning[: WARNING_MAX_RUNES + 1]) for warning in decision.warnings
            )
            if text
        )
    )
    if sum(len(item) for item in items) <= budget:
        return items
    summary_room = len(f"and {len(items)} more ImagePolicy warnings")
    kept: list[str] = []
    used = 0
    for item in items:
        if used + len(item) + summary_room > budget:
            break
        kept.append(item)
        used += len(item)
    kept.append(f"and {len(items) - len(kept)} more ImagePolicy warnings")
    return kept


def build_unpinned_message(
    view: workloads.PodView,
    operations: Iterable[patches.ReplaceOperation],
    mutating_configuration: str,
) -> str:
    """The refusal of a pod the policies admit but that arrived without the pins
    `operations` would write: each image as written, once, with the digest it needs."""
    written = {container.pointer: container.image for container in view.containers}
    images = "; ".join(
        dict.fromkeys(
            f"{written[op['path']]} (to {op['value'].rpartition('@')[2]})" for op in operations
        )
    )
    text = (
        "imageward: pinDigest: admitted by the policies, but not pinned by the mutating "
        f"webhook (MutatingWebhookConfiguration {mutating_configuration}), whose check a "
        "moment before had another outcome (a signature or tag that changed in between, a "
        "registry that failed or timed out under failurePolicy Ignore, a replica without "
        "the newest policy) or which did not run. Send the request again; if this repeats, "
        f"something rewrites the image after imageward's mutating webhook. Unpinned: {images}"
    )
    return _truncate_bytes(text, MAX_MESSAGE_BYTES)
