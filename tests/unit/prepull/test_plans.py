"""Layers mode's plan ConfigMap (operator namespace) and the credentials it carries sealed."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from imageward import constants
from imageward.prepull import model, planner, plans, sealing
from imageward.registry import auth
from imageward.registry import model as registry_model

UID = "5f0c7d1e-0000-4000-8000-000000000001"
KEY = plans.build_prepull_key("shop", "web-tier", UID)


def digest(char: str) -> registry_model.Digest:
    return registry_model.Digest("sha256:" + char * 64)


def plan_of(*images: tuple[str, Sequence[tuple[str, int]]]) -> planner.Plan:
    return planner.build_plan(
        [
            planner.PlanImage(
                image=name,
                digest=digest("f"),
                layers=tuple(
                    registry_model.Layer(
                        digest(char), size, "application/vnd.oci.image.layer.v1.tar+gzip"
                    )
                    for char, size in layers
                ),
            )
            for name, layers in images
        ],
        budget=None,
    )


REFERENCES = {
    "ghcr.io/acme/web:1.4": registry_model.ImageReference("ghcr.io", "acme/web", "1.4"),
    "ghcr.io/acme/api:2.0": registry_model.ImageReference("ghcr.io", "acme/api", "2.0"),
    "docker.io/library/nginx": registry_model.ImageReference(
        "docker.io", "library/nginx", "latest"
    ),
}
PLAN = plan_of(
    ("ghcr.io/acme/web:1.4", [("1", 100), ("2", 50)]),
    ("ghcr.io/acme/api:2.0", [("1", 100), ("3", 10)]),
    ("docker.io/library/nginx", [("1", 100)]),
)


def document(**kwargs: Any) -> dict[str, Any]:
    return plans.build_plan_document("web-tier", "shop", UID, PLAN, REFERENCES, **kwargs)


def test_the_plan_document_names_blobs_sources_and_nodes() -> None:
    doc = document(
        pull_secrets=["regcred", "other"],
        missing_pull_secrets=["other"],
        node_selector={"kubernetes.io/os": "linux"},
        tolerations=[model.Toleration(key="gpu", operator="Exists")],
    )
    assert doc["version"] == 1
    assert doc["prepull"] == {"namespace": "shop", "name": "web-tier", "uid": UID}
    assert doc["hash"] == plans.build_plan_hash(PLAN)
    assert doc["containerdNamespace"] == "k8s.io"
    assert doc["bytes"] == 160
    # Names only: the credentials travel sealed, beside the document.
    assert doc["pullSecrets"] == [
        {"name": "regcred", "found": True},
        {"name": "other", "found": False},
    ]
    assert doc["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert doc["tolerations"] == [{"operator": "Exists", "key": "gpu"}]
    assert doc["layers"][0] == {
        "digest": digest("1"),
        "size": 100,
        "sources": [
            {"registry": "docker.io", "repository": "library/nginx"},
            {"registry": "ghcr.io", "repository": "acme/api"},
            {"registry": "ghcr.io", "repository": "acme/web"},
        ],
    }
    assert "nodeSelector" not in document()  # a hand-written plan: every node


def test_the_plan_needs_a_reference_for_every_image() -> None:
    with pytest.raises(ValueError, match="unknown:1"):
        plans.build_plan_document("w", "shop", UID, plan_of(("unknown:1", [("1", 1)])), {})


def test_the_plan_configmap_lives_in_the_operators_namespace_and_names_its_prepull() -> None:
    doc = document()
    text = plans.build_plan_text(doc)
    cm = plans.build_plan_configmap(
        doc,
        namespace="imageward-system",
        plan_text=text,
        sealed_credentials=None,
        content_hash="c0ffee",
    )
    metadata = cm["metadata"]
    assert (cm["apiVersion"], cm["kind"]) == ("v1", "ConfigMap")
    assert metadata["namespace"] == "imageward-system"
    assert metadata["name"] == f"prepull-plan-{KEY}"
    # Owner references cannot cross namespaces: the operator deletes it itself.
    assert "ownerReferences" not in metadata
    assert metadata["labels"] == {
        "app.kubernetes.io/name": "imageward",
        "app.kubernetes.io/component": "prepull-plan",
        constants.LABEL_MANAGED_BY: "imageward",
        constants.LABEL_PREPULL: KEY,
    }
    assert metadata["annotations"]["imageward.io/prepull-namespace"] == "shop"
    assert metadata["annotations"]["imageward.io/plan-hash"] == doc["hash"]
    assert cm["data"] == {"plan.json": text}
    assert json.loads(text) == doc
    assert plans.parse_plan_identity(cm) == ("shop", "web-tier", UID)
    # Annotations that do not hash to the key label are not believed.
    forged = json.loads(json.dumps(cm))
    forged["metadata"]["annotations"]["imageward.io/prepull-namespace"] = "kube-system"
    assert plans.parse_plan_identity(forged) is None
    assert plans.parse_plan_identity({"metadata": {"name": "kube-root-ca.crt"}}) is None


def test_a_plan_too_large_for_its_configmap_is_refused_saying_what_to_do() -> None:
    many = planner.build_plan(
        [
            planner.PlanImage(
                image="ghcr.io/acme/web:1.4",
                digest=digest("f"),
                layers=tuple(
                    registry_model.Layer(
                        registry_model.Digest(f"sha256:{index:064x}"), 1, "application/x"
                    )
                    for index in range(8000)
                ),
            )
        ],
        budget=None,
    )
    doc = plans.build_plan_document("w", "shop", UID, many, REFERENCES)
    with pytest.raises(plans.PlanTooLargeError, match=r"8000 layers .* over the 786432-byte cap"):
        plans.build_plan_text(doc)


def config(source: str, auths: dict[str, Any]) -> auth.DockerConfig:
    return auth.parse_docker_config({"auths": auths}, source=source)


def test_only_credentials_the_planned_registries_need_leave_the_namespace() -> None:
    secrets = [
        (
            "regcred",
            config(
                "Secret shop/regcred",
                {
                    "ghcr.io/acme": {"username": "acme", "password": "s3cret"},
                    "ghcr.io/other-team": {"username": "other", "password": "nope"},
                    "quay.io": {"username": "q", "password": "unrelated"},
                },
            ),
        ),
        ("empty", config("Secret shop/empty", {"quay.io": {"auth": "dTpw"}})),
    ]
    sources = {("ghcr.io", "acme/web"), ("ghcr.io", "acme/api"), ("docker.io", "library/nginx")}
    doc = plans.build_credentials_document(secrets, sources)
    assert doc == {
        "version": 1,
        "pullSecrets": [
            {
                "name": "regcred",
                "auths": {"ghcr.io/acme": {"username": "acme", "password": "s3cret"}},
            }
        ],
    }
    assert plans.build_credentials_document(secrets[1:], sources) is None
    parsed = plans.parse_credentials_document(json.dumps(doc).encode(), source="plan")
    chain = auth.build_credential_chain(parsed, "ghcr.io", "acme/web")
    assert [(c.username, c.password) for c in chain] == [("acme", "s3cret")]
    assert auth.build_credential_chain(parsed, "ghcr.io", "other-team/x") == ()


def test_the_content_hash_follows_what_the_agent_reads_not_the_nonce() -> None:
    text = plans.build_plan_text(document())
    base = plans.build_content_hash(text, '{"c":1}', "k1")
    assert plans.build_content_hash(text, '{"c":1}', "k1") == base
    assert plans.build_content_hash(text, '{"c":2}', "k1") != base
    assert plans.build_content_hash(text, '{"c":1}', "k2") != base  # a new key: seal again
    assert plans.build_content_hash(text, None, None) != base


# -- sealing -----------------------------------------------------------------------------------


def test_sealed_credentials_open_only_with_the_key_and_for_their_plan() -> None:
    key = sealing.generate_key()
    sealed = sealing.seal(key, b'{"secret": 1}', context=KEY)
    assert b"secret" not in sealed.encode()
    assert sealing.evaluate_key_id(sealed) == sealing.build_key_id(key)
    assert sealing.unseal(key, sealed, context=KEY) == b'{"secret": 1}'
    with pytest.raises(sealing.SealError, match=r"sealed with key .* but this key is"):
        sealing.unseal(sealing.generate_key(), sealed, context=KEY)
    # Moved into another PrePull's plan, it does not open.
    with pytest.raises(sealing.SealError, match="do not open for other"):
        sealing.unseal(key, sealed, context="other")
    head, _, tail = sealed.rpartition(".")
    altered = head + "." + ("A" if tail[0] != "A" else "B") + tail[1:]
    with pytest.raises(sealing.SealError, match="altered or moved"):
        sealing.unseal(key, altered, context=KEY)
    with pytest.raises(sealing.SealError, match="not sealed credentials"):
        sealing.unseal(key, "plain text", context=KEY)


def test_keys_are_read_raw_or_as_base64_and_nothing_else() -> None:
    key = bytes(range(32))
    assert sealing.parse_key(key, source="f") == key
    assert sealing.parse_key(b"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n", source="f") == key
    with pytest.raises(sealing.SealError, match="f: not a 32-byte key"):
        sealing.parse_key(b"short", source="f")
    with pytest.raises(sealing.SealError, match="over the"):
        sealing.seal(key, b"x" * (sealing.MAX_PLAINTEXT + 1), context=KEY)
