"""Keys Go's encoding/json would read differently from Python's `json`.

containerd, the registry and kubelet decode manifests, indexes and image configs with
Go's encoding/json, which matches object keys to struct fields case-insensitively
(Unicode simple folding: `Layers`, `LAYERS` and `\u017fize` all fill `layers`/`size`) and
lets the last match win. Python's `json` reads only the exact key. So a document with
both `"manifests"` and `"Manifests"` would have its entries checked from one list and
pulled from the other; `{"User": "65532", "user": "0"}` would be checked as non-root and
run as root. `evaluate_field_spelling` finds such keys, for the fields imageward reads,
so that the parsers can refuse the document instead of reading it another way than the
runtime does. No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from imageward import records

_set = object.__setattr__  # how a frozen Record's __init__ sets its fields


class Fields(records.Record):
    """The fields of one Go struct that imageward reads, and the structs nested in them."""

    __slots__ = ("lists", "names", "objects")
    names: frozenset[str]
    objects: Mapping[str, Fields]
    """Fields holding one object of a known struct (`config`, `platform`)."""
    lists: Mapping[str, Fields]
    """Fields holding an array of them (`layers`, `manifests`)."""

    def __init__(
        self,
        names: frozenset[str],
        objects: Mapping[str, Fields] = records.FACTORY,
        lists: Mapping[str, Fields] = records.FACTORY,
    ) -> None:
        _set(self, "names", names)
        _set(self, "objects", {} if objects is records.FACTORY else objects)
        _set(self, "lists", {} if lists is records.FACTORY else lists)

    @property
    def folded(self) -> Mapping[str, str]:
        """Each name's fold -> the name (made once per set of names: every manifest of a
        cold review is read)."""
        folded = _FOLDED.get(self.names)
        if folded is None:
            folded = _FOLDED[self.names] = {fold(name): name for name in self.names}
        return folded


#: `Fields.folded` of each set of names (the structs are module constants: a few).
_FOLDED: dict[frozenset[str], Mapping[str, str]] = {}


def fold(key: str) -> str:
    """Go's `foldName`: each rune lower-cased, then upper-cased (long s U+017F folds to S).

    Go maps one rune to one rune; where Python's full case mapping gives more than one
    character (`İ`), the character is kept as it is.
    """
    if key.isascii():
        return key.upper()  # lower then upper is upper, for every ASCII character
    folded = []
    for c in key:
        lower = c.lower() if len(c.lower()) == 1 else c
        folded.append(lower.upper() if len(lower.upper()) == 1 else lower)
    return "".join(folded)


PLATFORM = Fields(frozenset({"os", "architecture", "variant"}))
DESCRIPTOR = Fields(
    frozenset({"mediaType", "digest", "size", "platform", "annotations", "artifactType"}),
    objects={"platform": PLATFORM},
)
#: An OCI / Docker manifest or index (the fields both kinds have, as one struct).
MANIFEST = Fields(
    frozenset(
        {
            "schemaVersion",
            "mediaType",
            "artifactType",
            "config",
            "layers",
            "manifests",
            "subject",
            "annotations",
        }
    ),
    objects={"config": DESCRIPTOR, "subject": DESCRIPTOR},
    lists={"layers": DESCRIPTOR, "manifests": DESCRIPTOR},
)
#: An image config blob: the platform fields and the container config's User and Labels.
IMAGE_CONFIG = Fields(
    frozenset({"config", "os", "architecture", "variant", "created"}),
    objects={"config": Fields(frozenset({"User", "Labels"}))},
)


def evaluate_field_spelling(document: Any, fields: Fields, where: str = "document") -> str | None:
    """The first key Go would read as one of `fields` but Python would not, or None."""
    if not isinstance(document, Mapping):
        return None
    for key in document:
        if key in fields.names:
            continue  # the exact spelling: Python reads it as Go does
        name = fields.folded.get(fold(key)) if isinstance(key, str) else None
        if name is not None:
            return (
                f"{where} has key {key!r}, which Go's encoding/json (containerd) reads as "
                f"{name!r}: ambiguous document"
            )
    for name, nested in fields.objects.items():
        problem = evaluate_field_spelling(document.get(name), nested, f"{where}.{name}")
        if problem:
            return problem
    for name, nested in fields.lists.items():
        items = document.get(name)
        for index, item in enumerate(items if isinstance(items, list) else ()):
            problem = evaluate_field_spelling(item, nested, f"{where}.{name}[{index}]")
            if problem:
                return problem
    return None
