"""A parsed PrePull: typed, frozen, validated once.

`parse_prepull` accepts the object as the API server returns it (defaults applied) or as
a YAML document (defaults missing) and raises PrePullError naming the field and the
reason. The CRD's schema already refuses most mistakes at `kubectl apply` time; this
module still checks everything because the schema cannot check all of it: the object
form of `spec.images` is kept unpruned (see crds/prepulls.yaml), so a typo such as
`wieght` only shows up here, and quantities such as `500m` pass the quantity pattern but
are not whole bytes.

Nothing is resolved here: image references stay text (the registry client resolves
them), Secrets stay names.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from imageward import constants, errors
from imageward.policy import quantities, selectors
from imageward.registry import model as registry_model

KIND = "PrePull"

# Bounds shared with crds/prepulls.yaml.
MAX_IMAGES = 512
MAX_WEIGHT = 1_000_000
MAX_MIN_SHARE = 1_000_000
MAX_TOLERATIONS = 64
MAX_PULL_SECRETS = 32
MAX_IMAGE_LENGTH = 512
MAX_STATUS_IMAGES = 2048
MAX_STATUS_FAILURES = 20

DEFAULT_MAX_UNAVAILABLE = "10%"
DEFAULT_REFRESH_INTERVAL = "1h"
# Shorter intervals add registry traffic (and rate-limit risk) without pulling anything
# sooner than a digest change would.
MIN_REFRESH_INTERVAL = datetime.timedelta(seconds=10)

_E = TypeVar("_E", bound=enum.Enum)

_DNS_SUBDOMAIN_RE = re.compile(
    r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
)
_PERCENT_RE = re.compile(r"(100|[1-9][0-9]?)%")
# Go's time.ParseDuration syntax (what the CRD pattern and CEL duration() accept).
_DURATION_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}

# The reference grammar of distribution/reference (what kubelet and containerd accept),
# without IPv6 literals. Checked here so a typo is reported on the PrePull, not as an
# InvalidImageName on every node.
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_REFERENCE_RE = re.compile(
    rf"(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?"
)
_SHA256_RE = re.compile(r"sha256:[0-9a-f]{64}")
_MAX_NAME_LENGTH = 255


class PrePullError(errors.ImagewardError):
    """A PrePull that cannot be carried out as written; `field` names the bad field."""

    def __init__(self, name: str, reason: str, *, field: str | None = None) -> None:
        self.name = name
        self.reason = reason
        self.field = field
        super().__init__(f"PrePull {name}: {reason}")


class Mode(enum.Enum):
    IMAGES = "Images"
    LAYERS = "Layers"


class PullMethod(enum.Enum):
    INIT_CONTAINER = "InitContainer"
    IMAGE_VOLUME = "ImageVolume"


class WorkloadKind(enum.Enum):
    DEPLOYMENT = "Deployment"
    STATEFUL_SET = "StatefulSet"
    DAEMON_SET = "DaemonSet"
    CRON_JOB = "CronJob"


DEFAULT_WORKLOAD_KINDS = tuple(WorkloadKind)


@dataclasses.dataclass(frozen=True, slots=True)
class ImageEntry:
    """One entry of spec.images; a plain string entry has weight 1."""

    image: str
    weight: int = 1


@dataclasses.dataclass(frozen=True, slots=True)
class ResolvedImage:
    """An image and the digest its reference resolved to.

    For a multi-platform image this is the index digest, so each node pulls its own
    platform; the planner works on platform manifests instead.
    """

    image: str
    digest: registry_model.Digest


@dataclasses.dataclass(frozen=True, slots=True)
class FromWorkloads:
    kinds: tuple[WorkloadKind, ...] = DEFAULT_WORKLOAD_KINDS

    namespace_selector: selectors.LabelSelector | None = None
    """None: only the PrePull's own namespace. The empty selector: every namespace."""

    label_selector: selectors.LabelSelector = selectors.EMPTY


@dataclasses.dataclass(frozen=True, slots=True)
class LayerOptions:
    min_share: int = 1

    budget_per_node: quantities.Quantity | None = None
    """None: plan every eligible layer. Zero is allowed and plans nothing."""


@dataclasses.dataclass(frozen=True, slots=True)
class Toleration:
    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""
    toleration_seconds: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class PrePullSpec:
    images: tuple[ImageEntry, ...] = ()
    from_workloads: FromWorkloads | None = None
    mode: Mode = Mode.IMAGES
    pull_method: PullMethod = PullMethod.INIT_CONTAINER
    layers: LayerOptions = LayerOptions()

    node_selector: tuple[tuple[str, str], ...] = ()
    """Sorted by key, so equal specs build equal DaemonSets."""

    tolerations: tuple[Toleration, ...] = ()
    image_pull_secrets: tuple[str, ...] = ()

    max_unavailable: int | str = DEFAULT_MAX_UNAVAILABLE
    """A node count >= 1 or a percentage "1%".."100%", as a DaemonSet takes it."""

    refresh_interval: datetime.timedelta = datetime.timedelta(hours=1)
    priority_class_name: str | None = None


class _Invalid(Exception):
    """Internal: a field error, turned into PrePullError with the object's name."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def parse_duration(text: str) -> datetime.timedelta:
    """Parse a Go duration ("90s", "1h30m", "1.5h"); raises ValueError."""
    if not text or len(text) > 64:
        raise ValueError(f"{text!r} is not a duration (expected e.g. 30m, 1h or 1h30m)")
    position = 0
    seconds = 0.0
    while position < len(text):
        match = _DURATION_PART_RE.match(text, position)
        if match is None:
            hint = " (days are not a unit: write 24h)" if text.endswith("d") else ""
            raise ValueError(f"{text!r} is not a duration (expected e.g. 30m, 1h or 1h30m){hint}")
        seconds += float(match[1]) * _DURATION_UNITS[match[2]]
        position = match.end()
    return datetime.timedelta(seconds=seconds)


def _check_fields(obj: Mapping[str, Any], path: str, allowed: set[str]) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise _Invalid(
            f"{path}.{unknown[0]}", f"unknown field (known: {', '.join(sorted(allowed))})"
        )


def _mapping(obj: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _Invalid(f"{path}.{key}", "must be an object")
    return value


def _list(obj: Mapping[str, Any], key: str, path: str, *, max_items: int) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Invalid(f"{path}.{key}", "must be a list")
    if len(value) > max_items:
        raise _Invalid(f"{path}.{key}", f"at most {max_items} entries, got {len(value)}")
    return value


def _string(value: object, path: str, *, max_length: int = 253) -> str:
    if not isinstance(value, str):
        raise _Invalid(path, f"must be a string, not {value!r}")
    if len(value) > max_length:
        raise _Invalid(path, f"longer than {max_length} characters")
    return value


def _integer(value: object, path: str, *, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(path, f"must be an integer, not {value!r}")
    if not minimum <= value <= maximum:
        raise _Invalid(path, f"must be between {minimum} and {maximum}, got {value}")
    return value


def _enum(obj: Mapping[str, Any], key: str, path: str, cls: type[_E], default: _E) -> _E:
    value = obj.get(key)
    if value is None:
        return default
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(str(member.value) for member in cls)
        raise _Invalid(f"{path}.{key}", f"{value!r} is not one of {choices}") from None


def _selector(value: object, path: str) -> selectors.LabelSelector:
    if value is not None and not isinstance(value, Mapping):
        raise _Invalid(path, "must be a label selector (matchLabels, matchExpressions)")
    try:
        return selectors.parse_label_selector(value, path=path)
    except selectors.SelectorError as error:
        raise _Invalid(error.path, error.reason) from error


def _repository_path(image: str) -> str:
    """The repository path of a reference (no registry host, tag or digest), for hints."""
    name = image.split("@", 1)[0]
    if name.rfind(":") > name.rfind("/"):
        name = name[: name.rfind(":")]
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return rest
    return name


def _check_reference(image: str, path: str) -> None:
    if len(image) > MAX_IMAGE_LENGTH:
        raise _Invalid(path, f"longer than {MAX_IMAGE_LENGTH} characters")
    match = _REFERENCE_RE.fullmatch(image)
    if match is None:
        hint = ""
        if image != image.strip() or any(char.isspace() for char in image):
            hint = " (it contains white space)"
        elif any(char.isupper() for char in _repository_path(image)):
            hint = " (repository names are lowercase)"
        raise _Invalid(path, f"{image!r} is not a valid image reference{hint}")
    if len(match["name"]) > _MAX_NAME_LENGTH:
        raise _Invalid(path, f"{image!r}: the repository name is longer than 255 characters")
    digest = match["digest"]
    if digest is not None and digest.startswith("sha256:") and not _SHA256_RE.fullmatch(digest):
        raise _Invalid(path, f"{image!r}: a sha256 digest is 64 lowercase hex digits")


def _parse_image(item: object, path: str) -> ImageEntry:
    if isinstance(item, str):
        _check_reference(item, path)
        return ImageEntry(image=item)
    if not isinstance(item, Mapping):
        raise _Invalid(path, "must be an image reference or an object with image and weight")
    _check_fields(item, path, {"image", "weight"})
    if item.get("image") is None:
        raise _Invalid(f"{path}.image", "required")
    image = _string(item["image"], f"{path}.image", max_length=MAX_IMAGE_LENGTH)
    _check_reference(image, f"{path}.image")
    weight = item.get("weight")
    if weight is None:
        return ImageEntry(image=image)
    return ImageEntry(
        image=image, weight=_integer(weight, f"{path}.weight", minimum=1, maximum=MAX_WEIGHT)
    )


def _parse_images(spec: Mapping[str, Any]) -> tuple[ImageEntry, ...]:
    entries: list[ImageEntry] = []
    first_index: dict[str, int] = {}
    for index, item in enumerate(_list(spec, "images", "spec", max_items=MAX_IMAGES)):
        path = f"spec.images[{index}]"
        entry = _parse_image(item, path)
        # Refused rather than merged: which weight was meant is anyone's guess.
        if entry.image in first_index:
            raise _Invalid(
                path, f"{entry.image!r} is already listed at index {first_index[entry.image]}"
            )
        first_index[entry.image] = index
        entries.append(entry)
    return tuple(entries)


def _parse_from_workloads(spec: Mapping[str, Any]) -> FromWorkloads | None:
    path = "spec.fromWorkloads"
    obj = _mapping(spec, "fromWorkloads", "spec")
    if obj is None:
        return None
    _check_fields(obj, path, {"kinds", "namespaceSelector", "labelSelector"})
    kinds: list[WorkloadKind] = []
    raw_kinds = obj.get("kinds")
    if raw_kinds is None:
        kinds = list(DEFAULT_WORKLOAD_KINDS)
    else:
        if not isinstance(raw_kinds, list) or not raw_kinds:
            raise _Invalid(f"{path}.kinds", "must be a non-empty list (omit for all kinds)")
        for index, kind in enumerate(raw_kinds):
            try:
                parsed = WorkloadKind(kind)
            except ValueError:
                choices = ", ".join(member.value for member in WorkloadKind)
                raise _Invalid(
                    f"{path}.kinds[{index}]", f"{kind!r} is not one of {choices}"
                ) from None
            if parsed not in kinds:
                kinds.append(parsed)
    namespace_selector = None
    if obj.get("namespaceSelector") is not None:
        namespace_selector = _selector(obj["namespaceSelector"], f"{path}.namespaceSelector")
    return FromWorkloads(
        kinds=tuple(kinds),
        namespace_selector=namespace_selector,
        label_selector=_selector(obj.get("labelSelector"), f"{path}.labelSelector"),
    )


def _parse_layers(spec: Mapping[str, Any]) -> LayerOptions:
    path = "spec.layers"
    obj = _mapping(spec, "layers", "spec") or {}
    _check_fields(obj, path, {"minShare", "budgetPerNode"})
    min_share = 1
    if obj.get("minShare") is not None:
        min_share = _integer(obj["minShare"], f"{path}.minShare", minimum=1, maximum=MAX_MIN_SHARE)
    budget = None
    if obj.get("budgetPerNode") is not None:
        try:
            budget = quantities.parse_quantity(obj["budgetPerNode"])
        except quantities.QuantityError as error:
            raise _Invalid(
                f"{path}.budgetPerNode", f"{obj['budgetPerNode']!r} {error.reason}"
            ) from error
    return LayerOptions(min_share=min_share, budget_per_node=budget)


def _parse_node_selector(spec: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    obj = _mapping(spec, "nodeSelector", "spec")
    if not obj:
        return ()
    # A nodeSelector is matchLabels by another name: reuse its key and value checks.
    _selector({"matchLabels": obj}, "spec.nodeSelector")
    return tuple(sorted(obj.items()))


def _parse_toleration(item: object, path: str) -> Toleration:
    if not isinstance(item, Mapping):
        raise _Invalid(path, "must be an object (key, operator, value, effect, tolerationSeconds)")
    _check_fields(item, path, {"key", "operator", "value", "effect", "tolerationSeconds"})
    key = _string(item.get("key") or "", f"{path}.key", max_length=317)
    operator = item.get("operator") or "Equal"
    if operator not in ("Exists", "Equal"):
        raise _Invalid(f"{path}.operator", f"{operator!r} is not one of Exists, Equal")
    value = _string(item.get("value") or "", f"{path}.value", max_length=63)
    effect = item.get("effect") or ""
    if effect not in ("", "NoSchedule", "PreferNoSchedule", "NoExecute"):
        raise _Invalid(
            f"{path}.effect", f"{effect!r} is not one of NoSchedule, PreferNoSchedule, NoExecute"
        )
    if operator == "Exists" and value:
        raise _Invalid(f"{path}.value", "must be empty with operator Exists")
    if not key and operator != "Exists":
        raise _Invalid(f"{path}.key", "an empty key needs operator Exists")
    seconds = None
    if item.get("tolerationSeconds") is not None:
        if effect != "NoExecute":
            raise _Invalid(f"{path}.tolerationSeconds", "needs effect NoExecute")
        seconds = _integer(
            item["tolerationSeconds"],
            f"{path}.tolerationSeconds",
            minimum=-(2**63),
            maximum=2**63 - 1,
        )
    return Toleration(
        key=key, operator=operator, value=value, effect=effect, toleration_seconds=seconds
    )


def _parse_pull_secrets(spec: Mapping[str, Any]) -> tuple[str, ...]:
    names: list[str] = []
    for index, item in enumerate(
        _list(spec, "imagePullSecrets", "spec", max_items=MAX_PULL_SECRETS)
    ):
        path = f"spec.imagePullSecrets[{index}]"
        if not isinstance(item, Mapping):
            raise _Invalid(path, "must be an object with name")
        _check_fields(item, path, {"name"})
        name = _string(item.get("name"), f"{path}.name")
        if not _DNS_SUBDOMAIN_RE.fullmatch(name):
            raise _Invalid(f"{path}.name", f"{name!r} is not a valid Secret name")
        if name in names:
            raise _Invalid(f"{path}.name", f"{name!r} is listed twice")
        names.append(name)
    return tuple(names)


def _parse_max_unavailable(spec: Mapping[str, Any]) -> int | str:
    value = spec.get("maxUnavailable")
    if value is None:
        return DEFAULT_MAX_UNAVAILABLE
    if isinstance(value, str):
        if not _PERCENT_RE.fullmatch(value):
            raise _Invalid("spec.maxUnavailable", f"{value!r} is not a percentage from 1% to 100%")
        return value
    # A DaemonSet with maxUnavailable 0 (and no surge) could never roll out.
    return _integer(value, "spec.maxUnavailable", minimum=1, maximum=2**31 - 1)


def _parse_refresh_interval(spec: Mapping[str, Any]) -> datetime.timedelta:
    value = spec.get("refreshInterval")
    if value is None:
        value = DEFAULT_REFRESH_INTERVAL
    text = _string(value, "spec.refreshInterval", max_length=64)
    try:
        interval = parse_duration(text)
    except ValueError as error:
        raise _Invalid("spec.refreshInterval", str(error)) from error
    if interval < MIN_REFRESH_INTERVAL:
        raise _Invalid("spec.refreshInterval", f"{text!r} is shorter than 10s")
    return interval


def _parse_priority_class(spec: Mapping[str, Any]) -> str | None:
    value = spec.get("priorityClassName")
    if value is None or value == "":
        return None
    name = _string(value, "spec.priorityClassName")
    if not _DNS_SUBDOMAIN_RE.fullmatch(name):
        raise _Invalid("spec.priorityClassName", f"{name!r} is not a valid PriorityClass name")
    return name


def _parse_spec(spec: Mapping[str, Any]) -> PrePullSpec:
    _check_fields(
        spec,
        "spec",
        {
            "images",
            "fromWorkloads",
            "mode",
            "pullMethod",
            "layers",
            "nodeSelector",
            "tolerations",
            "imagePullSecrets",
            "maxUnavailable",
            "refreshInterval",
            "priorityClassName",
        },
    )
    images = _parse_images(spec)
    from_workloads = _parse_from_workloads(spec)
    if not images and from_workloads is None:
        raise _Invalid("spec.images", "name at least one image, or set fromWorkloads")
    return PrePullSpec(
        images=images,
        from_workloads=from_workloads,
        mode=_enum(spec, "mode", "spec", Mode, Mode.IMAGES),
        pull_method=_enum(spec, "pullMethod", "spec", PullMethod, PullMethod.INIT_CONTAINER),
        layers=_parse_layers(spec),
        node_selector=_parse_node_selector(spec),
        tolerations=tuple(
            _parse_toleration(item, f"spec.tolerations[{index}]")
            for index, item in enumerate(
                _list(spec, "tolerations", "spec", max_items=MAX_TOLERATIONS)
            )
        ),
        image_pull_secrets=_parse_pull_secrets(spec),
        max_unavailable=_parse_max_unavailable(spec),
        refresh_interval=_parse_refresh_interval(spec),
        priority_class_name=_parse_priority_class(spec),
    )


def _object_name(obj: object) -> str:
    metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    namespace = metadata.get("namespace") if isinstance(metadata, Mapping) else None
    if not isinstance(name, str) or not name:
        return "<unnamed>"
    return f"{namespace}/{name}" if isinstance(namespace, str) and namespace else name


def parse_prepull(obj: Mapping[str, Any]) -> PrePullSpec:
    """Validate a PrePull object; raises PrePullError naming the field and the reason."""
    name = _object_name(obj)
    if not isinstance(obj, Mapping):
        raise PrePullError(name, "not an object")
    try:
        kind = obj.get("kind")
        if kind is not None and kind != KIND:
            raise _Invalid("kind", f"{kind!r} is not {KIND}")
        api_version = obj.get("apiVersion")
        if api_version is not None and api_version != constants.API_VERSION:
            raise _Invalid("apiVersion", f"{api_version!r} is not {constants.API_VERSION}")
        spec = obj.get("spec")
        if not isinstance(spec, Mapping):
            raise _Invalid("spec", "required (an object)")
        return _parse_spec(spec)
    except _Invalid as error:
        raise PrePullError(name, str(error), field=error.path) from None
