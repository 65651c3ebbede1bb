"""What the operator hands the node agent for one Layers-mode PrePull: a plan document
in one ConfigMap of the operator's namespace. Pure builders, no API calls.

One node-agent DaemonSet, in the operator's namespace, serves every Layers-mode PrePull.
A PrePull's namespace therefore never holds a privileged pod (it may enforce the
`restricted` Pod Security level), and the number of objects per PrePull stays one,
whatever the number of nodes:

- the ConfigMap `prepull-plan-<key>` (key: `build_prepull_key`, a hash of the PrePull's
  namespace, name and uid), labelled `app.kubernetes.io/component=prepull-plan`, holds
  `plan.json` (the blobs, where they come from, which nodes it is for) and, when the
  PrePull names pull secrets, `credentials`: the docker config entries of those Secrets
  that the plan's registries need, sealed (see `sealing`) so the agent reads no Secret;
- owner references cannot cross namespaces, so the operator deletes the ConfigMap when
  the PrePull goes (a watch event, and a sweep of orphans at start-up).

Per-node progress comes back as one condition per plan on each agent pod (`reports`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from imageward import constants, errors
from imageward.prepull import model, nodes, planner, unpack
from imageward.registry import auth as registry_auth
from imageward.registry import model as registry_model
from imageward.registry import reference as registry_reference

PLAN_FORMAT_VERSION = 1
CREDENTIALS_FORMAT_VERSION = 1
PLAN_KEY = "plan.json"
CREDENTIALS_KEY = "credentials"
CONTAINERD_NAMESPACE = "k8s.io"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
COMPONENT = "prepull-plan"
APP_NAME = "imageward"
#: What the agent and the operator select plan ConfigMaps by.
SELECTOR = {LABEL_NAME: APP_NAME, LABEL_COMPONENT: COMPONENT}
ANNOTATION_NAMESPACE = "imageward.io/prepull-namespace"
ANNOTATION_NAME = "imageward.io/prepull-name"
ANNOTATION_UID = "imageward.io/prepull-uid"
ANNOTATION_PLAN_HASH = "imageward.io/plan-hash"
ANNOTATION_CONTENT_HASH = "imageward.io/content-hash"

#: A ConfigMap holds at most 1 MiB; what is left is for metadata and the credentials.
MAX_PLAN_BYTES = 768 * 1024
_NAME_PREFIX = "prepull-plan-"


class PlanTooLargeError(errors.ImagewardError):
    """The plan document would not fit in its ConfigMap; says by how much and what to do."""


def build_prepull_key(namespace: str, name: str, uid: str) -> str:
    """16 hex characters naming one PrePull object (a re-created one gets another):
    the plan ConfigMap's name, the agent's lease key and its pod condition type."""
    text = f"{namespace}/{name}/{uid}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_plan_name(key: str) -> str:
    return _NAME_PREFIX + key


def build_selector_text() -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(SELECTOR.items()))


def build_plan_hash(plan: planner.Plan, unpack_entries: Sequence[Mapping[str, Any]] = ()) -> str:
    """Hash of what the plan puts on a node (digests and sizes, and the layers it
    unpacks per image: `unpack.build_unpack_entries`), not of why."""
    layers: list[Any] = sorted([layer.digest, layer.size] for layer in plan.layers)
    if unpack_entries:
        layers = [layers, unpack.build_unpack_hash_material(unpack_entries)]
    return hashlib.sha256(json.dumps(layers, separators=(",", ":")).encode()).hexdigest()[:16]


def build_plan_sources(
    plan: planner.Plan, references: Mapping[str, registry_model.ImageReference]
) -> dict[str, list[tuple[str, str]]]:
    """Each planned blob's (registry, repository) sources, sorted."""
    sources: dict[str, list[tuple[str, str]]] = {}
    for layer in plan.layers:
        found: set[tuple[str, str]] = set()
        for image in layer.images:
            reference = references.get(image)
            if reference is None:
                raise ValueError(f"layer {layer.digest}: no reference for image {image!r}")
            found.add((reference.registry, reference.repository))
        sources[layer.digest] = sorted(found)
    return sources


def build_plan_document(
    prepull_name: str,
    namespace: str,
    uid: str,
    plan: planner.Plan,
    references: Mapping[str, registry_model.ImageReference],
    *,
    pull_secrets: Sequence[str] = (),
    missing_pull_secrets: Iterable[str] = (),
    node_selector: Mapping[str, str] | None = None,
    tolerations: Sequence[model.Toleration] = (),
    images: Sequence[planner.PlanImage] = (),
) -> dict[str, Any]:
    """The agent's input: the blobs to fetch, where from, which nodes want them, and
    which layers of which images to unpack once held.

    `references` maps each image as written (PlannedLayer.images) to its parsed
    reference; every repository holding a layer is listed, so the agent can fall back
    to another when one refuses, and labels the blob for each
    (containerd.io/distribution.source.<registry>=<repository>). `pull_secrets` are only
    named here (their credentials travel sealed beside the document); those in
    `missing_pull_secrets` could not be read, which the agent adds to an authentication
    error. `node_selector` None means every node. `images` (the planned images, with
    their config digests) become `images`: per image, the layers up to its first
    unplanned one, which the agent unpacks into snapshots (see `unpack`).
    """
    sources = build_plan_sources(plan, references)
    missing = set(missing_pull_secrets)
    planned = {layer.digest for layer in plan.layers}
    unpack_entries = unpack.build_unpack_entries(
        ((image.image, image.digest, image.config, image.layers) for image in images),
        planned,
        references,
    )
    document: dict[str, Any] = {
        "version": PLAN_FORMAT_VERSION,
        "prepull": {"namespace": namespace, "name": prepull_name, "uid": uid},
        "hash": build_plan_hash(plan, unpack_entries),
        "containerdNamespace": CONTAINERD_NAMESPACE,
        "bytes": plan.bytes,
        "layers": [
            {
                "digest": layer.digest,
                "size": layer.size,
                "sources": [
                    {"registry": registry, "repository": repository}
                    for registry, repository in sources[layer.digest]
                ],
            }
            for layer in plan.layers
        ],
        "pullSecrets": [
            {"name": secret, "found": secret not in missing} for secret in pull_secrets
        ],
    }
    if unpack_entries:
        document["images"] = unpack_entries
    if node_selector is not None:
        document["nodeSelector"] = dict(sorted(node_selector.items()))
        document["tolerations"] = nodes.build_tolerations_json(tolerations)
    return document


def _path_matches(prefix: str, repository: str) -> bool:
    return not prefix or repository == prefix or repository.startswith(prefix + "/")


def build_credentials_document(
    secrets: Sequence[tuple[str, registry_auth.DockerConfig]],
    sources: Iterable[tuple[str, str]],
) -> dict[str, Any] | None:
    """The docker config entries of the PrePull's pull secrets that some planned source
    (registry, repository) needs, per Secret and in the PrePull's order; None when none
    does. Entries for other registries never leave the PrePull's namespace."""
    wanted = {
        (registry_reference.build_canonical_host(registry), repository)
        for registry, repository in sources
    }
    result = []
    for name, config in secrets:
        auths: dict[str, dict[str, str]] = {}
        for entry in config.entries:
            if not any(
                registry_auth.evaluate_host_match(entry.host, registry)
                and _path_matches(entry.path, repository)
                for registry, repository in wanted
            ):
                continue
            credentials = entry.credentials
            values = {
                "username": credentials.username,
                "password": credentials.password,
                "identitytoken": credentials.identity_token,
                "registrytoken": credentials.registry_token,
            }
            auths[entry.key] = {k: v for k, v in values.items() if v}
        if auths:
            result.append({"name": name, "auths": auths})
    if not result:
        return None
    return {"version": CREDENTIALS_FORMAT_VERSION, "pullSecrets": result}


def parse_credentials_document(data: bytes, *, source: str) -> list[registry_auth.DockerConfig]:
    """The inverse of build_credentials_document (after unsealing)."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise errors.CredentialsError(source, f"not JSON: {e}") from e
    if not isinstance(document, Mapping) or document.get("version") != CREDENTIALS_FORMAT_VERSION:
        raise errors.CredentialsError(source, "not a version 1 credentials document")
    configs = []
    for item in document.get("pullSecrets") or []:
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise errors.CredentialsError(source, "a pullSecrets entry has no name")
        configs.append(
            registry_auth.parse_docker_config(
                {"auths": item.get("auths") or {}}, source=f"pull secret {item['name']}"
            )
        )
    return configs


def build_plan_text(document: Mapping[str, Any]) -> str:
    """The document as the ConfigMap stores it: compact JSON, at most MAX_PLAN_BYTES."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    if len(text) > MAX_PLAN_BYTES:
        raise PlanTooLargeError(
            f"the plan of {len(document.get('layers') or [])} layers takes {len(text)} bytes, "
            f"over the {MAX_PLAN_BYTES}-byte cap of its ConfigMap; plan fewer layers "
            "(a smaller layers.budgetPerNode, a higher layers.minShare, or fewer images)"
        )
    return text


def build_content_hash(plan_text: str, credentials_text: str | None, key_id: str | None) -> str:
    """Changes exactly when what the agent would read changes (the credentials before
    sealing, and the key they are sealed with), so re-sealing never rewrites an
    unchanged ConfigMap."""
    material = json.dumps([plan_text, credentials_text, key_id], separators=(",", ":"))
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def build_plan_configmap(
    document: Mapping[str, Any],
    *,
    namespace: str,
    plan_text: str,
    sealed_credentials: str | None,
    content_hash: str,
) -> dict[str, Any]:
    """The ConfigMap `prepull-plan-<key>` in the operator's `namespace`."""
    identity = document["prepull"]
    key = build_prepull_key(identity["namespace"], identity["name"], identity["uid"])
    data = {PLAN_KEY: plan_text}
    if sealed_credentials is not None:
        data[CREDENTIALS_KEY] = sealed_credentials
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": build_plan_name(key),
            "namespace": namespace,
            "labels": {
                **SELECTOR,
                constants.LABEL_MANAGED_BY: constants.MANAGER_NAME,
                constants.LABEL_PREPULL: key,
            },
            "annotations": {
                ANNOTATION_NAMESPACE: identity["namespace"],
                ANNOTATION_NAME: identity["name"],
                ANNOTATION_UID: identity["uid"],
                ANNOTATION_PLAN_HASH: document["hash"],
                ANNOTATION_CONTENT_HASH: content_hash,
            },
        },
        "data": data,
    }


def parse_plan_identity(configmap: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(namespace, name, uid) of the PrePull a plan ConfigMap is for; None when its
    annotations are missing or do not hash to its key label (not ours, or altered)."""
    metadata = configmap.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    labels = metadata.get("labels") or {}
    identity = tuple(
        annotations.get(k) for k in (ANNOTATION_NAMESPACE, ANNOTATION_NAME, ANNOTATION_UID)
    )
    if not all(isinstance(part, str) and part for part in identity):
        return None
    namespace, name, uid = (str(part) for part in identity)
    if labels.get(constants.LABEL_PREPULL) != build_prepull_key(namespace, name, uid):
        return None
    return namespace, name, uid
