"""Read what admission checks out of a Pod or a workload's pod template.

`parse_pod_view` takes an object body as the apiserver sends it (a Pod, or a Deployment,
ReplicaSet, StatefulSet, DaemonSet, Job, CronJob or ReplicationController) and returns a
frozen `PodView`: the containers' images with the JSON pointer of each `image` field,
the pod labels, namespace, service account, pull secrets and the node's platform when
the pod pins one.

Mutating webhooks see objects before the apiserver validates them, so any field may
have any JSON type. Missing and null fields read as Kubernetes defaults them; a field
of the wrong type raises errors.MalformedObjectError naming its path, never a
TypeError or KeyError.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final, Literal

from imageward import errors
from imageward.admission import reviews
from imageward.registry import platforms as registry_platforms

ContainerKind = Literal["containers", "initContainers", "ephemeralContainers"]

#: In pod order: kubelet starts init containers first, but messages read better with the
#: main containers first and it is the order `kubectl get pod -o yaml` prints them in.
CONTAINER_KINDS: Final[tuple[ContainerKind, ...]] = (
    "containers",
    "initContainers",
    "ephemeralContainers",
)

#: Where each kind keeps its pod template; the Pod is its own template.
TEMPLATE_PATHS: Final[Mapping[str, tuple[str, ...]]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "Job": ("spec", "template"),
    # Not named by the product spec, but it holds a pod template like a ReplicaSet does,
    # and leaving it out would only move the refusal from `kubectl apply` to pod creation.
    "ReplicationController": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}

LABEL_ARCH: Final = "kubernetes.io/arch"
LABEL_OS: Final = "kubernetes.io/os"
# Deprecated since Kubernetes 1.14 but still set on nodes and found in old manifests.
LABEL_ARCH_BETA: Final = "beta.kubernetes.io/arch"
LABEL_OS_BETA: Final = "beta.kubernetes.io/os"

DEFAULT_SERVICE_ACCOUNT: Final = "default"

Segment = str | int
FieldPath = tuple[Segment, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class ContainerImage:
    kind: ContainerKind
    index: int
    """Position in its list (`spec.containers[index]`)."""

    name: str
    """The container's name; "" when the object has none yet (it is invalid then)."""

    image: str
    """The image exactly as written."""

    pointer: str
    """JSON pointer (RFC 6901) to the `image` field, for JSONPatch."""


@dataclasses.dataclass(frozen=True, slots=True)
class PodView:
    kind: str
    """The object's kind: Pod, Deployment, ..."""

    name: str
    """metadata.name, else metadata.generateName (pods of controllers), else ""."""

    namespace: str | None
    spec_pointer: str
    """JSON pointer of the pod spec: "/spec", "/spec/template/spec", ..."""

    labels: tuple[tuple[str, str], ...]
    """The pod's labels (the template's for a workload), sorted by key."""

    service_account: str
    image_pull_secrets: tuple[str, ...]
    """Names of the pod's imagePullSecrets, in order, without duplicates."""

    node_arch: str | None
    """The one architecture the pod is pinned to, when it is pinned to exactly one."""

    node_os: str | None
    """The one OS the pod is pinned to (node selector, node affinity or spec.os.name)."""

    containers: tuple[ContainerImage, ...]
    """Containers with an image, in CONTAINER_KINDS order, then by index."""

    @property
    def pod_labels(self) -> dict[str, str]:
        return dict(self.labels)

    @property
    def images(self) -> tuple[str, ...]:
        """Each distinct image once, in container order: what needs looking up."""
        return tuple(dict.fromkeys(container.image for container in self.containers))


# ---------------------------------------------------------------------------- paths


def build_json_pointer(segments: Iterable[Segment]) -> str:
    """RFC 6901: "/" before each segment, "~" written "~0" and "/" written "~1".

    "~" is escaped first, or the "~1" written for a "/" would read back as "~" + "1".
    """
    return "".join("/" + str(segment).replace("~", "~0").replace("/", "~1") for segment in segments)


def build_field_path(segments: Iterable[Segment]) -> str:
    """The path as kubectl and apiserver errors print it: `spec.containers[0].image`.

    Map keys that contain "." or "/" (label keys) are bracketed: `nodeSelector[kubernetes.io/os]`.
    """
    text = ""
    for segment in segments:
        if isinstance(segment, int) or "." in segment or "/" in segment or not segment:
            text += f"[{segment}]"
        else:
            text += f".{segment}" if text else segment
    return text


# ---------------------------------------------------------------------------- typed reads


class _Reader:
    """Typed access to one object body; every error names the kind and the field path."""

    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def fail(self, path: FieldPath, reason: str) -> errors.MalformedObjectError:
        return errors.MalformedObjectError(self.kind, build_field_path(path), reason)

    def mapping(self, value: object, path: FieldPath) -> Mapping[str, Any] | None:
        if value is None or type(value) is dict:  # JSON's own: no ABC check per field
            return value
        if not isinstance(value, Mapping):
            raise self.fail(path, f"must be an object, not {reviews.build_json_type(value)}")
        return value

    def walk(self, value: object, path: FieldPath, keys: Iterable[str]) -> Mapping[str, Any] | None:
        """Follow `keys` down from `value`; None as soon as a level is missing or null."""
        current = self.mapping(value, path)
        for key in keys:
            if current is None:
                return None
            path = (*path, key)
            current = self.mapping(current.get(key), path)
        return current

    def items(self, value: object, path: FieldPath) -> Iterator[tuple[int, object]]:
        if value is None:
            return iter(())
        # JSON has only arrays; tuples are accepted for callers building bodies in Python.
        if not isinstance(value, list | tuple):
            raise self.fail(path, f"must be an array, not {reviews.build_json_type(value)}")
        return enumerate(value)

    def string(self, value: object, path: FieldPath) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(path, f"must be a string, not {reviews.build_json_type(value)}")
        return value

    def string_map(self, value: object, path: FieldPath) -> dict[str, str]:
        """A map[string]string; a null value reads as "" (what Go's decoder makes of it)."""
        found = self.mapping(value, path)
        result: dict[str, str] = {}
        for key, item in (found or {}).items():
            if not isinstance(key, str):
                raise self.fail(path, f"keys must be strings, not {reviews.build_json_type(key)}")
            text = self.string(item, (*path, key))
            result[key] = text if text is not None else ""
        return result


# ---------------------------------------------------------------------------- parse


def _parse_containers(
    reader: _Reader, spec: Mapping[str, Any] | None, spec_path: FieldPath
) -> tuple[ContainerImage, ...]:
    found: list[ContainerImage] = []
    if spec is None:
        return ()
    spec_pointer = build_json_pointer(spec_path)
    for kind in CONTAINER_KINDS:
        list_path = (*spec_path, kind)
        for index, item in reader.items(spec.get(kind), list_path):
            item_path = (*list_path, index)
            # A null entry decodes to an empty container in Go: nothing to check here, and
            # the apiserver's validation refuses it for its missing name.
            container = reader.mapping(item, item_path)
            if container is None:
                continue
            name = reader.string(container.get("name"), (*item_path, "name")) or ""
            image = reader.string(container.get("image"), (*item_path, "image"))
            # No image: validation refuses a pod without one, and a template may leave it
            # for config management to fill in; either way there is nothing to check yet.
            if not image:
                continue
            found.append(
                ContainerImage(
                    kind=kind,
                    index=index,
                    name=name,
                    image=image,
                    # build_json_pointer((*item_path, "image")): the kind and the index
                    # need no escaping.
                    pointer=f"{spec_pointer}/{kind}/{index}/image",
                )
            )
    return tuple(found)


def _parse_pull_secrets(
    reader: _Reader, spec: Mapping[str, Any] | None, spec_path: FieldPath
) -> tuple[str, ...]:
    if spec is None:
        return ()
    path = (*spec_path, "imagePullSecrets")
    names: dict[str, None] = {}
    for index, item in reader.items(spec.get("imagePullSecrets"), path):
        reference = reader.mapping(item, (*path, index))
        if reference is None:
            continue
        name = reader.string(reference.get("name"), (*path, index, "name"))
        # An empty name is accepted by the apiserver with a warning; it names no Secret.
        if name:
            names[name] = None
    return tuple(names)


def _parse_service_account(
    reader: _Reader, spec: Mapping[str, Any] | None, spec_path: FieldPath
) -> str:
    if spec is None:
        return DEFAULT_SERVICE_ACCOUNT
    name = reader.string(spec.get("serviceAccountName"), (*spec_path, "serviceAccountName"))
    # `serviceAccount` is the deprecated alias the apiserver still copies from.
    legacy = reader.string(spec.get("serviceAccount"), (*spec_path, "serviceAccount"))
    return name or legacy or DEFAULT_SERVICE_ACCOUNT


def _affinity_pin(
    reader: _Reader, spec: Mapping[str, Any], spec_path: FieldPath, keys: frozenset[str]
) -> str | None:
    """The single value required node affinity allows for a label, if there is one.

    Terms are ORed and the expressions of a term ANDed, so the pod is pinned only when
    every term narrows the label to one value with `In` and all terms name the same one.
    Anything looser (Exists, NotIn, several values, a term that does not mention the
    label) pins nothing: the policy engine then checks every linux platform, the safe side.
    """
    required = ("affinity", "nodeAffinity", "requiredDuringSchedulingIgnoredDuringExecution")
    selector = reader.walk(spec, spec_path, required)
    if selector is None:
        return None
    terms_path = (*spec_path, *required, "nodeSelectorTerms")
    pinned: set[str] = set()
    terms = list(reader.items(selector.get("nodeSelectorTerms"), terms_path))
    if not terms:
        return None
    for term_index, raw_term in terms:
        term_path = (*terms_path, term_index)
        term = reader.mapping(raw_term, term_path)
        if term is None:
            return None
        allowed: set[str] | None = None
        expressions_path = (*term_path, "matchExpressions")
        for index, raw in reader.items(term.get("matchExpressions"), expressions_path):
            expression_path = (*expressions_path, index)
            expression = reader.mapping(raw, expression_path)
            if expression is None:
                continue
            key = reader.string(expression.get("key"), (*expression_path, "key"))
            operator = reader.string(expression.get("operator"), (*expression_path, "operator"))
            values_path = (*expression_path, "values")
            values = {
                text
                for value_index, value in reader.items(expression.get("values"), values_path)
                if (text := reader.string(value, (*values_path, value_index))) is not None
            }
            if key in keys and operator == "In":
                allowed = values if allowed is None else allowed & values
        if allowed is None or len(allowed) != 1:
            return None
        pinned |= allowed
    return pinned.pop() if len(pinned) == 1 else None


def _parse_node_pins(
    reader: _Reader, spec: Mapping[str, Any] | None, spec_path: FieldPath
) -> tuple[str | None, str | None]:
    if spec is None:
        return None, None
    selector = reader.string_map(spec.get("nodeSelector"), (*spec_path, "nodeSelector"))
    arch = selector.get(LABEL_ARCH) or selector.get(LABEL_ARCH_BETA) or None
    os_name = selector.get(LABEL_OS) or selector.get(LABEL_OS_BETA) or None
    # Read affinity even when the selector decides, so a malformed one is reported the
    # same way whatever else the pod says.
    affinity_arch = _affinity_pin(reader, spec, spec_path, frozenset({LABEL_ARCH, LABEL_ARCH_BETA}))
    affinity_os = _affinity_pin(reader, spec, spec_path, frozenset({LABEL_OS, LABEL_OS_BETA}))
    pod_os = reader.walk(spec, spec_path, ("os",))
    spec_os = (
        reader.string(pod_os.get("name"), (*spec_path, "os", "name"))
        if pod_os is not None
        else None
    )
    return arch or affinity_arch, os_name or affinity_os or spec_os or None


def parse_pod_view(
    body: object, *, kind: str | None = None, namespace: str | None = None
) -> PodView:
    """Read a Pod or a workload's pod template.

    `kind` defaults to the body's own `kind` (the AdmissionReview's `request.kind.kind` is
    the authoritative one: pass it). `namespace` fills in when the body has none (the
    request's namespace). Raises errors.MalformedObjectError for an unsupported kind or a
    field of the wrong type.
    """
    shown_kind = kind if kind is not None else "object"
    if not isinstance(body, Mapping):
        raise errors.MalformedObjectError(
            shown_kind, "", f"must be an object, not {reviews.build_json_type(body)}"
        )
    if kind is None:
        found_kind = body.get("kind")
        if not isinstance(found_kind, str) or not found_kind:
            raise errors.MalformedObjectError(shown_kind, "kind", "required: a non-empty string")
        kind = found_kind
    template_path = TEMPLATE_PATHS.get(kind)
    if template_path is None:
        raise errors.MalformedObjectError(
            kind,
            "kind",
            f"pods are not read from a {kind}; expected one of {', '.join(TEMPLATE_PATHS)}",
        )
    reader = _Reader(kind)
    metadata = reader.walk(body, (), ("metadata",))
    name = ""
    found_namespace: str | None = None
    if metadata is not None:
        name = (
            reader.string(metadata.get("name"), ("metadata", "name"))
            or reader.string(metadata.get("generateName"), ("metadata", "generateName"))
            or ""
        )
        found_namespace = reader.string(metadata.get("namespace"), ("metadata", "namespace"))
    template = reader.walk(body, (), template_path)
    labels: dict[str, str] = {}
    if template is not None:
        template_metadata = reader.walk(template, template_path, ("metadata",))
        if template_metadata is not None:
            labels = reader.string_map(
                template_metadata.get("labels"), (*template_path, "metadata", "labels")
            )
    spec_path: FieldPath = (*template_path, "spec")
    spec = reader.walk(template, template_path, ("spec",)) if template is not None else None
    arch, os_name = _parse_node_pins(reader, spec, spec_path)
    return PodView(
        kind=kind,
        name=name,
        namespace=found_namespace or namespace or None,
        spec_pointer=build_json_pointer(spec_path),
        labels=tuple(sorted(labels.items())),
        service_account=_parse_service_account(reader, spec, spec_path),
        image_pull_secrets=_parse_pull_secrets(reader, spec, spec_path),
        node_arch=arch,
        node_os=os_name,
        containers=_parse_containers(reader, spec, spec_path),
    )


def parse_platform(view: PodView) -> registry_platforms.PlatformChoice:
    """The nodes the pod may run on, as far as it says: its OS (spec.os.name, node
    selector or affinity) and architecture. What it leaves open stays open: a pod that
    names no OS may land on Windows nodes too, so their index entries are checked.
    Label values carry no variant, so every variant a node may have counts."""
    return registry_platforms.PlatformChoice(os=view.node_os, architecture=view.node_arch)


def build_new_containers(
    old_body: object | None, view: PodView, kind: str
) -> frozenset[tuple[str, str, str]]:
    """(kind, name, image) of the containers an UPDATE brings that the old object did
    not run: the only ones a mutation may touch (pinning a running container's image
    would restart it). Every container of a CREATE, or of an unreadable old object."""
    every = frozenset((c.kind, c.name, c.image) for c in view.containers)
    if old_body is None:
        return every
    try:
        old = parse_pod_view(old_body, kind=kind)
    except errors.MalformedObjectError:
        return every
    return every - {(c.kind, c.name, c.image) for c in old.containers}


def images_changed(old_body: object | None, new_body: object, kind: str) -> bool:
    """Whether an UPDATE brings an image the old object did not run in that container.

    True when a container (ephemeral containers added through the `ephemeralcontainers`
    subresource included) is added or renamed, or changes image, and when the pinned
    platform changes (the same image can fail on another architecture). Compared as
    (kind, name, image) triples, so reordering is not a change and duplicate names
    cannot hide one. A missing or malformed old object counts as a change: check rather
    than skip. Raises errors.MalformedObjectError for a malformed new object.
    """
    new = parse_pod_view(new_body, kind=kind)
    if old_body is None:
        return bool(new.containers)
    try:
        old = parse_pod_view(old_body, kind=kind)
    except errors.MalformedObjectError:
        return bool(new.containers)
    return images_changed_between(old, new)


def images_changed_between(old: PodView, new: PodView) -> bool:
    """`images_changed` for views already parsed."""
    before = {(c.kind, c.name, c.image) for c in old.containers}
    if any((c.kind, c.name, c.image) not in before for c in new.containers):
        return True
    return bool(new.containers) and parse_platform(new) != parse_platform(old)
