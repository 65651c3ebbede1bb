"""Fuzz targets: every parser that reads bytes an attacker chooses, with its contract.

Each target takes bytes and returns None when the parser kept its contract: it
returned a value that satisfies the invariants the code promises, or raised the
module's own documented error. Anything else leaves the target: an AssertionError
for a broken invariant, the unexpected exception itself for a crash. An unexpected
exception matters even where a caller catches everything: the registry client turns
it into a `lookup` failure, which `failurePolicy: Ignore` admits.

Leading bytes of some inputs select a parameter (a Content-Type, a kind, which
credentials): `Target.json_from` says where the JSON document starts, so the
structural mutator (`mutate.py`) leaves the selector alone.

Signatures: the fuzzer cannot forge a signature, so the payload targets sign what
they are given with a fixed test key (`TEST_KEY`) before handing it to the verifier;
the parse paths behind the signature check are reached that way.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import json
import math
import pathlib
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import jsonpatch
import jsonpointer
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from imageward import errors
from imageward.admission import patches, reviews, workloads
from imageward.registry import auth, manifests, model, platforms, reference, routes
from imageward.signatures import bundle, keyless, keys, legacy, verify
from imageward.signatures import model as signature_model

HERE: Final = pathlib.Path(__file__).resolve().parent
CORPUS: Final = HERE / "corpus"
CRASHERS: Final = HERE / "crashers"
#: The fake Sigstore's trusted root the keyless seeds were made under (see `seeds.py`).
KEYLESS_ROOT: Final = HERE / "keyless_root.json"

#: The image every signature target checks signatures for.
DIGEST: Final = model.Digest("sha256:" + hashlib.sha256(b"imageward fuzz image").hexdigest())
OTHER_DIGEST: Final = model.Digest("sha256:" + hashlib.sha256(b"another image").hexdigest())

#: A fixed P-256 key (cosign's default): the seeds and the signing targets use it.
TEST_KEY: Final = ec.derive_private_key(
    int.from_bytes(hashlib.sha256(b"imageward fuzz key").digest(), "big"), ec.SECP256R1()
)
TEST_AUTHORITY: Final = verify.KeyAuthority(
    name="fuzz-key",
    key=keys.parse_public_key(
        TEST_KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        authority="fuzz-key",
    ),
)

OCI_MANIFEST: Final = manifests.OCI_MANIFEST
SIMPLESIGNING: Final = legacy.MEDIA_TYPE
BUNDLE_V03: Final = bundle.MEDIA_TYPE
EMPTY_JSON: Final = "application/vnd.oci.empty.v1+json"

#: The form `verify._unreadable` gives an exception no format module expected: a parser
#: bug caught by the verifier's safety net, which the format modules must not rely on.
_SAFETY_NET = re.compile(
    r"^(legacy signature layer|bundle|referrer manifest|legacy signature manifest"
    r"|Notation (JWS|COSE) signature) \S+ "
    r"cannot be read: \w+: "
)


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    max_len: int
    json_from: int | None
    """Offset of the JSON document in an input; None for text inputs (headers, names)."""
    tokens: tuple[str, ...] = ()
    """Words worth inserting (libFuzzer `-dict`, and the smoke run's mutations)."""


# ---------------------------------------------------------------------------- helpers


def text_of(data: bytes) -> str:
    """Bytes as a header or a JSON string can hold them: invalid UTF-8 as lone surrogates."""
    return data.decode("utf-8", "surrogateescape")


def selector(data: bytes) -> int:
    return data[0] if data else 0


def decode_json(data: bytes) -> Any:
    """What a JSON decoder upstream (Kopf, the kubernetes client) would have handed over.

    Not a parser under test: undecodable bodies never reach the code, so they end the
    run early rather than count.
    """
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return _UNDECODABLE


_UNDECODABLE: Final = object()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sign(data: bytes) -> bytes:
    return TEST_KEY.sign(data, ec.ECDSA(hashes.SHA256()))


def check_descriptor(descriptor: manifests.Descriptor) -> None:
    assert reference.DIGEST_RE.fullmatch(descriptor.digest), descriptor.digest
    assert isinstance(descriptor.size, int) and not isinstance(descriptor.size, bool)
    assert 0 <= descriptor.size <= 2**63 - 1
    assert isinstance(descriptor.media_type, str)
    assert descriptor.artifact_type is None or isinstance(descriptor.artifact_type, str)
    check_annotations(descriptor.annotations)
    if descriptor.platform is not None:
        platform = descriptor.platform
        assert isinstance(platform.os, str) and isinstance(platform.architecture, str)
        assert platform.variant is None or (isinstance(platform.variant, str) and platform.variant)


def check_annotations(annotations: tuple[tuple[str, str], ...]) -> None:
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in annotations)
    assert list(annotations) == sorted(annotations)


def check_verification(result: verify.VerificationResult, *, signatures: int | None) -> None:
    """The verifier's result is data, and no format module let an exception out."""
    assert isinstance(result, verify.VerificationResult)
    if signatures is not None:
        assert result.signatures_found == signatures, result
    for attempt in result.attempts:
        assert not _SAFETY_NET.search(attempt.reason), attempt.reason
    for outcome in result.outcomes:
        assert outcome.verified or outcome.reason, outcome


@functools.cache
def keyless_root() -> keyless.TrustedRoot:
    return keyless.parse_trusted_root(KEYLESS_ROOT.read_bytes(), authority="fuzz-keyless")


@functools.cache
def keyless_identity() -> keyless.Identity:
    return keyless.parse_identity(
        authority="fuzz-keyless",
        issuer="https://token.actions.githubusercontent.com",
        subject=None,
        subject_regexp="^https://github.com/acme/",
    )


# ---------------------------------------------------------------------------- references


def fuzz_reference(data: bytes) -> None:
    """`reference.parse_reference`: a canonical `ImageReference`, or InvalidReferenceError."""
    text = text_of(data)
    reference.has_explicit_tag(text)
    try:
        # Unmemoised: the cache must not hide a second parse that behaves differently.
        ref = reference.parse_reference.__wrapped__(text)
    except errors.InvalidReferenceError as e:
        assert e.reference == text
        return
    assert ref.original == text
    assert ref.registry and ref.registry == ref.registry.lower()
    assert reference.HOST_RE.fullmatch(ref.registry), ref.registry
    assert reference.build_canonical_host(ref.registry) == ref.registry
    reference.validate_path(text, ref.repository)
    assert len(ref.name) <= reference.MAX_NAME_LENGTH
    assert ref.tag is not None or ref.digest is not None
    assert ref.tag is None or reference.TAG_RE.fullmatch(ref.tag)
    if ref.digest is not None:
        assert reference.parse_digest(ref.digest) == ref.digest
        if ref.digest.startswith("sha256:"):
            assert reference.TAG_RE.fullmatch(reference.build_signature_tag(ref.digest))
    assert ref.reference in (ref.digest, ref.tag)
    # The normalised name parses back to the same image whenever it names its host
    # unambiguously (a dotless lower-case first component would read as a Hub path).
    if reference.is_domain(ref.registry):
        again = reference.parse_reference.__wrapped__(str(ref))
        assert (again.registry, again.repository, again.tag, again.digest) == (
            ref.registry,
            ref.repository,
            ref.tag,
            ref.digest,
        ), (str(ref), again)


# ---------------------------------------------------------------------------- manifests

CONTENT_TYPES: Final[tuple[str | None, ...]] = (
    None,
    "",
    manifests.OCI_MANIFEST,
    manifests.OCI_INDEX,
    manifests.DOCKER_MANIFEST,
    manifests.DOCKER_MANIFEST_LIST,
    "application/json",
    "application/octet-stream",
    manifests.DOCKER_SCHEMA1_SIGNED,
    "APPLICATION/VND.OCI.IMAGE.INDEX.V1+JSON; charset=utf-8",
    "text/html",
    "application/vnd.oci.image.manifest.v1+json ; q=1",
)

PLATFORMS: Final = (
    model.Platform("linux", "amd64"),
    model.Platform("linux", "arm64"),
    model.Platform("linux", "arm", "v6"),
    model.Platform("windows", "amd64"),
    model.Platform("linux", "x86_64", "V1"),
)


def fuzz_manifest(data: bytes) -> None:
    """`manifests.parse_manifest` and what reads its result: a checked value or ManifestError.

    Byte 0: the Content-Type (low nibble), whether the body is fetched by its digest
    (0x10), with a `Docker-Content-Digest` (0x20), or by a digest it does not hash to
    (0x40, which must be a DigestMismatch).
    """
    flags = selector(data)
    body = data[1:]
    content_type = CONTENT_TYPES[(flags & 0x0F) % len(CONTENT_TYPES)]
    actual = model.Digest(sha256(body))
    wrong = model.Digest(sha256(body + b"\n"))
    expected = wrong if flags & 0x40 else actual if flags & 0x10 else None
    claimed = f" {actual} " if flags & 0x20 else None
    try:
        fetched = manifests.parse_manifest(
            body, content_type=content_type, expected_digest=expected, claimed_digest=claimed
        )
    except manifests.DigestMismatch:
        assert expected == wrong
        return
    except manifests.ManifestError:
        return
    assert expected != wrong, "a body was accepted by a digest it does not hash to"
    assert fetched.digest == actual and fetched.body == body and fetched.size == len(body)
    assert fetched.media_type == fetched.content.media_type
    assert fetched.media_type in manifests.ALL_TYPES
    content = fetched.content
    check_annotations(content.annotations)
    if content.subject is not None:
        check_descriptor(content.subject)
    if isinstance(content, manifests.ImageIndex):
        assert fetched.is_index and content.media_type in manifests.INDEX_TYPES
        for descriptor in content.manifests:
            check_descriptor(descriptor)
        entries = manifests.build_entries(content)
        for node in PLATFORMS:
            selected = platforms.select_entries(entries, node)
            # containerd's choice: one entry for a Linux node, never unknown/unknown, and
            # only entries that run on the node (or carry no platform at all).
            assert all(0 <= e.position < len(content.manifests) for e in selected)
            assert platforms.normalise(node).os == "windows" or len(selected) <= 1
            for entry in selected:
                found = entry.platform
                assert found is None or platforms.evaluate_runs_on(found, node)
                assert found is None or (found.os, found.architecture) != ("unknown", "unknown")
        for artifact_type in (None, BUNDLE_V03):
            referrers = manifests.build_referrers(content, artifact_type=artifact_type)
            assert all(d in content.manifests for d in referrers)
        return
    assert not fetched.is_index and content.media_type in manifests.MANIFEST_TYPES
    check_descriptor(content.config)
    for layer in content.layers:
        check_descriptor(layer)
    image = manifests.build_platform_image(fetched, platform=None, config=manifests.NO_CONFIG)
    assert image.digest == actual and len(image.layers) == len(content.layers)
    assert image.compressed_size == sum(layer.size for layer in content.layers)
    assert image.compressed_size >= 0
    assert image.largest_layer is None or image.largest_layer.size <= image.compressed_size


def fuzz_config(data: bytes) -> None:
    """`manifests.parse_config`: the fields policies read, typed, or ManifestError."""
    try:
        config = manifests.parse_config(data)
    except manifests.ManifestError:
        return
    for value in (config.user, config.os, config.architecture, config.created, config.variant):
        assert value is None or isinstance(value, str)
    check_annotations(config.labels)
    assert len(dict(config.labels)) == len(config.labels)


# ---------------------------------------------------------------------------- legacy cosign


def build_legacy_manifest(payload: bytes, annotations: Mapping[str, str]) -> bytes:
    """A `.sig` manifest with one simple-signing layer over `payload`, as cosign writes it."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "size": 2,
                "digest": sha256(b"{}"),
            },
            "layers": [
                {
                    "mediaType": SIMPLESIGNING,
                    "size": len(payload),
                    "digest": sha256(payload),
                    "annotations": dict(annotations),
                }
            ],
        }
    ).encode()


def fuzz_legacy_manifest(data: bytes) -> None:
    """`legacy.parse_signature_manifest` and the reads after it: values or `Refused`."""
    try:
        found = legacy.parse_signature_manifest(data)
    except signature_model.Refused as refused:
        assert refused.check.result == "malformed", refused.check
        return
    for signature in found:
        assert isinstance(signature.layer_digest, str)
        for value in (
            signature.signature,
            signature.certificate,
            signature.chain,
            signature.rekor_bundle,
        ):
            assert value is None or (isinstance(value, str) and value)
        try:
            legacy.read_payload(signature, {})
        except signature_model.Refused as refused:
            assert refused.check.result in ("malformed", "unsupported"), refused.check
        else:
            raise AssertionError("a payload that was never fetched was read")
        try:
            raw = legacy.signature_bytes(signature)
        except signature_model.Refused as refused:
            assert refused.check.result == "malformed"
        else:
            assert isinstance(raw, bytes)
        check = legacy.verify_with_key(
            signature, b"{}", DIGEST, TEST_AUTHORITY.key, authority=TEST_AUTHORITY.name
        )
        assert not check.verified
    result = verify.verify(
        DIGEST, verify.SignatureSet(legacy_manifests=(data,)), [TEST_AUTHORITY], 1
    )
    check_verification(result, signatures=len(found))
    assert not result.passed


def _lookup(document: object, name: str) -> object:
    """Go's encoding/json field match (case-insensitive), as cosign reads the payload."""
    if not isinstance(document, dict):
        return None
    matches = [value for key, value in document.items() if key.lower() == name]
    return matches[0] if len(matches) == 1 else None


def fuzz_legacy_payload(data: bytes) -> None:
    """A simple-signing payload signed with the test key, through `verify.verify`.

    The signature holds, so what decides is `legacy.check_payload`: it returns a Check
    (never raises), and a payload verifies only when it is an image signature naming
    the digest, as cosign reads it.
    """
    payload = data
    manifest = build_legacy_manifest(payload, {legacy.SIGNATURE_ANNOTATION: b64(sign(payload))})
    signatures = verify.SignatureSet(legacy_manifests=(manifest,), blobs={sha256(payload): payload})
    result = verify.verify(DIGEST, signatures, [TEST_AUTHORITY], 1)
    check_verification(result, signatures=1)
    check = legacy.check_payload(payload, DIGEST)
    assert isinstance(check, signature_model.Check)
    assert result.passed == check.verified, (result, check)
    if check.verified:
        document = json.loads(payload)
        critical = _lookup(document, "critical")
        assert _lookup(critical, "type") == legacy.SIGNATURE_TYPE
        named = _lookup(_lookup(critical, "image"), "docker-manifest-digest")
        assert isinstance(named, str) and named.lower() == DIGEST
        # The same signature must never vouch for another image.
        assert not legacy.check_payload(payload, OTHER_DIGEST).verified


# ---------------------------------------------------------------------------- bundles


def build_referrer_manifest(raw_bundle: bytes) -> bytes:
    """The referrer manifest cosign v3 pushes for a bundle of `DIGEST`."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": BUNDLE_V03,
            "config": {"mediaType": EMPTY_JSON, "size": 2, "digest": sha256(b"{}")},
            "layers": [
                {"mediaType": BUNDLE_V03, "size": len(raw_bundle), "digest": sha256(raw_bundle)}
            ],
            "annotations": {bundle.PREDICATE_ANNOTATION: bundle.SIGN_PREDICATE_TYPE},
            "subject": {"mediaType": OCI_MANIFEST, "size": 1234, "digest": DIGEST},
        }
    ).encode()


def fuzz_referrer_manifest(data: bytes) -> None:
    """`bundle.parse_referrer_manifest`: bundle layers, () for other artifacts, or Refused."""
    try:
        refs = bundle.parse_referrer_manifest(data)
    except signature_model.Refused as refused:
        assert refused.check.result == "malformed"
        return
    for ref in refs:
        assert isinstance(ref.layer_digest, str)
        assert ref.predicate_type in (None, bundle.SIGN_PREDICATE_TYPE)
        try:
            bundle.read_bundle(ref, {})
        except signature_model.Refused as refused:
            assert refused.check.result in ("malformed", "unsupported")
        else:
            raise AssertionError("a bundle that was never fetched was read")
    result = verify.verify(
        DIGEST, verify.SignatureSet(bundle_manifests=(data,)), [TEST_AUTHORITY], 1
    )
    check_verification(result, signatures=len(refs) if refs else None)
    assert not result.passed


def fuzz_bundle(data: bytes) -> None:
    """`bundle.parse_bundle` and both verifiers: a Check for every bundle, never a raise.

    A bundle verifies with the test key only when one of its signatures is the test
    key's over its own envelope (the seeds'), and then only for the digest its
    statement names; the keyless verifier (sigstore-python against the fake root)
    answers with a Check too.
    """
    verified = False
    try:
        parsed = bundle.parse_bundle(data)
    except signature_model.Refused as refused:
        assert refused.check.result == "malformed"
        parsed = None
    if parsed is not None:
        assert parsed.raw == data and parsed.media_type.startswith(bundle.MEDIA_TYPE_PREFIX)
        check = bundle.verify_with_key(
            parsed, DIGEST, TEST_AUTHORITY.key, authority=TEST_AUTHORITY.name
        )
        assert isinstance(check, signature_model.Check)
        verified = check.verified
        if verified:
            assert parsed.envelope is not None
            statement = bundle.check_statement(
                parsed.envelope.payload_type, parsed.envelope.payload, DIGEST
            )
            assert statement.verified
            other = bundle.verify_with_key(
                parsed, OTHER_DIGEST, TEST_AUTHORITY.key, authority=TEST_AUTHORITY.name
            )
            assert not other.verified
        if parsed.envelope is None:
            assert bundle.describe_unverifiable(parsed).result in ("unsupported", "malformed")
        else:
            keyless_check = keyless.verify_bundle(
                parsed, DIGEST, keyless_identity(), keyless_root(), authority="fuzz-keyless"
            )
            assert isinstance(keyless_check, signature_model.Check)
    signatures = verify.SignatureSet(
        bundle_manifests=(build_referrer_manifest(data),), blobs={sha256(data): data}
    )
    result = verify.verify(DIGEST, signatures, [TEST_AUTHORITY], 1)
    check_verification(result, signatures=1)
    assert result.passed == verified, result


PAYLOAD_TYPES: Final = (
    bundle.INTOTO_PAYLOAD_TYPE,
    bundle.INTOTO_PAYLOAD_TYPE,
    bundle.INTOTO_PAYLOAD_TYPE,
    "application/vnd.in-toto+json ",
    "application/vnd.dev.cosign.simplesigning.v1+json",
    "",
)


def fuzz_dsse_statement(data: bytes) -> None:
    """An in-toto statement in a DSSE envelope signed with the test key, through `verify`.

    Byte 0 picks the payload type. The signature holds, so `bundle.check_statement`
    decides: a statement verifies only when it is cosign's sign predicate naming the
    digest's sha256.
    """
    payload_type = PAYLOAD_TYPES[selector(data) % len(PAYLOAD_TYPES)]
    payload = data[1:]
    envelope = {
        "payload": b64(payload),
        "payloadType": payload_type,
        "signatures": [{"sig": b64(sign(bundle.pae(payload_type, payload))), "keyid": ""}],
    }
    raw = json.dumps(
        {
            "mediaType": BUNDLE_V03,
            "verificationMaterial": {"publicKey": {"hint": ""}, "tlogEntries": []},
            "dsseEnvelope": envelope,
        }
    ).encode()
    signatures = verify.SignatureSet(
        bundle_manifests=(build_referrer_manifest(raw),), blobs={sha256(raw): raw}
    )
    result = verify.verify(DIGEST, signatures, [TEST_AUTHORITY], 1)
    check_verification(result, signatures=1)
    check = bundle.check_statement(payload_type, payload, DIGEST)
    assert result.passed == check.verified, (result, check)
    if check.verified:
        statement = json.loads(payload)
        assert payload_type == bundle.INTOTO_PAYLOAD_TYPE
        assert statement["_type"] in bundle.STATEMENT_TYPES
        assert statement["predicateType"] == bundle.SIGN_PREDICATE_TYPE
        named = [
            s["digest"]["sha256"].lower()
            for s in statement["subject"]
            if isinstance(s, dict)
            and isinstance(s.get("digest"), dict)
            and isinstance(s["digest"].get("sha256"), str)
        ]
        assert DIGEST.partition(":")[2] in named
        assert not bundle.check_statement(payload_type, payload, OTHER_DIGEST).verified


def fuzz_keyless_legacy(data: bytes) -> None:
    """A keyless `.sig` manifest (certificate, chain, Rekor SET) against the fake root.

    `keyless.verify_legacy` parses PEM certificates, the Rekor bundle annotation and the
    Rekor entry body, all chosen by the signer: it returns a Check, never raises.
    The payload is the seeds' own, so the payload check is reached when the rest holds.
    """
    try:
        found = legacy.parse_signature_manifest(data)
    except signature_model.Refused:
        return
    payload = keyless_payload()
    for signature in found:
        check = keyless.verify_legacy(
            signature,
            payload,
            DIGEST,
            keyless_identity(),
            keyless_root(),
            authority="fuzz-keyless",
        )
        assert isinstance(check, signature_model.Check)


def keyless_payload() -> bytes:
    """The simple-signing payload of the keyless seeds (cosign's exact bytes)."""
    return json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": "registry.test/acme/web"},
                "image": {"docker-manifest-digest": DIGEST},
                "type": legacy.SIGNATURE_TYPE,
            },
            "optional": None,
        },
        separators=(",", ":"),
    ).encode()


# ---------------------------------------------------------------------------- admission


def check_view(view: workloads.PodView, body: object) -> None:
    """A PodView's pointers point at what it read, and its pin patch applies cleanly."""
    assert view.kind in workloads.TEMPLATE_PATHS
    assert isinstance(view.name, str) and isinstance(view.service_account, str)
    assert view.service_account
    assert list(view.labels) == sorted(view.labels)
    assert len(set(view.image_pull_secrets)) == len(view.image_pull_secrets)
    assert all(name and isinstance(name, str) for name in view.image_pull_secrets)
    for container in view.containers:
        assert container.image and isinstance(container.image, str)
        assert container.pointer.startswith(view.spec_pointer + "/")
        assert jsonpointer.resolve_pointer(body, container.pointer) == container.image
    choice = workloads.parse_platform(view)
    assert (choice.os, choice.architecture) == (view.node_os, view.node_arch)
    pins = dict.fromkeys(view.images, DIGEST)
    try:
        operations = patches.build_pin_patch(view, pins)
    except errors.InvalidReferenceError:
        return
    patched = jsonpatch.apply_patch(body, list(operations))
    for operation in operations:
        pinned = reference.parse_reference(operation["value"])
        assert pinned.digest == DIGEST
        original = jsonpointer.resolve_pointer(body, operation["path"])
        before = reference.parse_reference(original)
        assert (pinned.registry, pinned.repository) == (before.registry, before.repository)
        assert pinned.tag == before.tag
        assert jsonpointer.resolve_pointer(patched, operation["path"]) == operation["value"]


def fuzz_admission_review(data: bytes) -> None:
    """`reviews.parse_review`, then the pod view of its object: values or Malformed*Error."""
    body = decode_json(data)
    if body is _UNDECODABLE:
        return
    try:
        request = reviews.parse_review(body)
    except errors.MalformedReviewError as e:
        assert e.path and e.reason
        return
    assert request["operation"] in reviews.OPERATIONS
    assert request["uid"] and isinstance(request["uid"], str)
    assert request["kind"]["kind"] and request["kind"]["version"]
    assert isinstance(request["dryRun"], bool)
    assert all(isinstance(group, str) for group in request["userInfo"]["groups"])
    obj = request["object"]
    if request["operation"] in ("CREATE", "UPDATE"):
        assert obj is not None
    if obj is None:
        return
    kind = request["kind"]["kind"]
    try:
        view = workloads.parse_pod_view(obj, kind=kind, namespace=request["namespace"] or None)
    except errors.MalformedObjectError as e:
        assert e.kind == kind
        return
    check_view(view, obj)
    changed = workloads.images_changed(request["oldObject"], obj, kind)
    assert isinstance(changed, bool)
    if not view.containers:
        assert not changed


WORKLOAD_KINDS: Final[tuple[str | None, ...]] = (None, *workloads.TEMPLATE_PATHS, "Secret")


def fuzz_workload(data: bytes) -> None:
    """`workloads.parse_pod_view` on any JSON object body; byte 0 picks the kind (or none)."""
    kind = WORKLOAD_KINDS[selector(data) % len(WORKLOAD_KINDS)]
    body = decode_json(data[1:])
    if body is _UNDECODABLE:
        return
    try:
        view = workloads.parse_pod_view(body, kind=kind)
    except errors.MalformedObjectError as e:
        assert e.reason
        return
    assert kind is None or view.kind == kind
    check_view(view, body)
    assert workloads.images_changed(None, body, view.kind) == bool(view.containers)
    assert not workloads.images_changed(body, body, view.kind)


# ---------------------------------------------------------------------------- auth

REGISTRIES: Final = (
    ("docker.io", "library/nginx"),
    ("ghcr.io", "acme/web"),
    ("localhost:5000", "a/b"),
    ("registry.test", "acme/web/api"),
    ("[::1]:5000", "x"),
)


def check_docker_config(config: auth.DockerConfig, source: str) -> None:
    assert config.source == source
    for entry in config.entries:
        assert entry.host and isinstance(entry.path, str) and entry.key
        credentials = entry.credentials
        assert credentials.username or credentials.identity_token or credentials.registry_token
        assert credentials.source.startswith(source)
    for registry, repository in REGISTRIES:
        chain = auth.build_credential_chain([config, config], registry, repository)
        fingerprints = [credentials.fingerprint for credentials in chain]
        assert len(set(fingerprints)) == len(fingerprints)
        everything = [entry.credentials for entry in config.entries]
        assert all(credentials in everything for credentials in chain)


def fuzz_docker_config(data: bytes) -> None:
    """`auth.parse_docker_config` (a config.json / .dockerconfigjson / .dockercfg file)."""
    source = "fuzz config"
    for raw in (data, text_of(data)):
        try:
            config = auth.parse_docker_config(raw, source=source)
        except errors.CredentialsError as e:
            assert e.source == source
            continue
        check_docker_config(config, source)


SECRET_TYPES: Final = (
    auth.SECRET_TYPE_DOCKERCONFIGJSON,
    auth.SECRET_TYPE_DOCKERCFG,
    "Opaque",
)


def fuzz_pull_secret(data: bytes) -> None:
    """`auth.parse_pull_secret` on a Secret shaped as the API returns it.

    The apiserver fixes the Secret's shape (`data` is a map of base64 strings); what a
    namespace user chooses is the type and the bytes. Byte 0: the type (low bits) and
    whether the bytes go in `data` base64-encoded, in `data` as they are (not base64),
    or in `stringData`.
    """
    flags = selector(data)
    kind = SECRET_TYPES[(flags & 0x03) % len(SECRET_TYPES)]
    field = ".dockercfg" if kind == auth.SECRET_TYPE_DOCKERCFG else ".dockerconfigjson"
    content = data[1:]
    where = (flags >> 2) & 0x03
    secret: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "pull", "namespace": "shop"},
        "type": kind,
    }
    if where == 0:
        secret["data"] = {field: b64(content)}
    elif where == 1:
        secret["data"] = {field: text_of(content)}
    elif where == 2:
        secret["stringData"] = {field: text_of(content)}
    try:
        config = auth.parse_pull_secret(secret)
    except errors.CredentialsError as e:
        assert e.source == "Secret shop/pull"
        return
    assert kind != "Opaque"
    check_docker_config(config, "Secret shop/pull")


CREDENTIALS: Final[tuple[auth.Credentials | None, ...]] = (
    None,
    auth.Credentials(username="alice", password="s3cret", source="fuzz"),
    auth.Credentials(identity_token="refresh-token", source="fuzz"),
)


def fuzz_challenge(data: bytes) -> None:
    """`auth.parse_challenges` (never raises) and `build_token_request` (or ChallengeError).

    Lines are separate `WWW-Authenticate` headers. A token request goes to the realm's
    own origin, and never sends credentials over plain HTTP unless allowed.
    """
    headers = text_of(data).split("\n")
    challenges = auth.parse_challenges(headers)
    for challenge in challenges:
        assert challenge.scheme and challenge.scheme == challenge.scheme.lower()
        assert all(name == name.lower() and name for name, _ in challenge.params)
        for index, credentials in enumerate(CREDENTIALS):
            allow_plain_http = bool(index & 1)
            try:
                request = auth.build_token_request(
                    challenge,
                    scopes=[auth.build_scope("acme/web")],
                    credentials=credentials,
                    allow_plain_http=allow_plain_http,
                )
            except auth.ChallengeError:
                continue
            realm = challenge.realm
            assert realm is not None and request.url.startswith(realm)
            assert routes.build_origin(request.url) == routes.build_origin(realm)
            scheme = urllib.parse.urlsplit(request.url).scheme
            assert scheme in ("http", "https")
            if credentials is not None and not allow_plain_http:
                assert scheme == "https"
            assert request.method in ("GET", "POST")


def fuzz_token_response(data: bytes) -> None:
    """`auth.parse_token_response`: a header-safe token and a finite expiry, or ChallengeError."""
    now = 1_000_000.0
    try:
        token = auth.parse_token_response(data, now=now)
    except auth.ChallengeError:
        return
    assert re.fullmatch(r"[\x21-\x7e]+", token.value)
    assert math.isfinite(token.expires_at) and token.expires_at >= now
    assert "\n" not in token.authorization and "\r" not in token.authorization


# ---------------------------------------------------------------------------- routes

FIRST_PAGE: Final = f"https://registry.test/v2/acme/web/referrers/{DIGEST}"


def fuzz_link(data: bytes) -> None:
    """`routes.parse_next_link` on a referrers `Link` header, and the URL the client builds."""
    header = text_of(data)
    link = routes.parse_next_link(header)
    if link is None:
        return
    assert isinstance(link, str) and link in header
    try:
        url = routes.build_redirect_url(FIRST_PAGE, link)
    except ValueError:
        # urllib refuses it (an unbalanced IPv6 bracket): the client must then fail the
        # lookup as a bad answer; see the report in the README's security section.
        return
    assert isinstance(url, str)
    routes.build_origin(url)


def fuzz_retry_after(data: bytes) -> None:
    """`routes.parse_retry_after`: None or a non-negative number of seconds, never a raise."""
    value = routes.parse_retry_after(text_of(data), now=1_700_000_000.0)
    assert value is None or (isinstance(value, float) and value >= 0), value


def fuzz_error_body(data: bytes) -> None:
    """`routes.parse_error_body`: at most `limit` characters of text, never a raise."""
    said = routes.parse_error_body(data, limit=300)
    assert isinstance(said, str) and len(said) <= 300


# ---------------------------------------------------------------------------- table

_JSON_TOKENS: Final = ('"', "{", "}", "[", "]", ":", ",", "null", "true", "false", "\\u0000")
_MANIFEST_TOKENS: Final = (
    *_JSON_TOKENS,
    "schemaVersion",
    "mediaType",
    "artifactType",
    "config",
    "layers",
    "manifests",
    "subject",
    "annotations",
    "platform",
    "architecture",
    "os",
    "variant",
    "digest",
    "size",
    *manifests.ALL_TYPES,
    manifests.DOCKER_SCHEMA1,
    *manifests.CONFIG_TYPES,
    "vnd.docker.reference.type",
    "attestation-manifest",
    "unknown",
    "linux",
    "amd64",
    "arm64",
    "v8",
    DIGEST,
    "sha512:",
)
_SIGNATURE_TOKENS: Final = (
    *_MANIFEST_TOKENS,
    SIMPLESIGNING,
    BUNDLE_V03,
    legacy.SIGNATURE_ANNOTATION,
    legacy.CERTIFICATE_ANNOTATION,
    legacy.CHAIN_ANNOTATION,
    legacy.REKOR_BUNDLE_ANNOTATION,
    legacy.SIGNATURE_TYPE,
    "critical",
    "identity",
    "docker-reference",
    "image",
    "docker-manifest-digest",
    "Docker-manifest-digest",
    "type",
    "optional",
    "verificationMaterial",
    "dsseEnvelope",
    "messageSignature",
    "payload",
    "payloadType",
    "signatures",
    "sig",
    "keyid",
    bundle.PREDICATE_ANNOTATION,
    bundle.SIGN_PREDICATE_TYPE,
    bundle.INTOTO_PAYLOAD_TYPE,
    *bundle.STATEMENT_TYPES,
    "_type",
    "predicateType",
    "predicate",
    "sha256",
    DIGEST.partition(":")[2],
    "SignedEntryTimestamp",
    "Payload",
    "body",
    "integratedTime",
    "logIndex",
    "logID",
    "-----BEGIN CERTIFICATE-----",
    "-----END CERTIFICATE-----",
)
_ADMISSION_TOKENS: Final = (
    *_JSON_TOKENS,
    *reviews.API_VERSIONS,
    reviews.KIND,
    *reviews.OPERATIONS,
    *workloads.TEMPLATE_PATHS,
    *workloads.CONTAINER_KINDS,
    "request",
    "uid",
    "kind",
    "group",
    "version",
    "resource",
    "subResource",
    "namespace",
    "name",
    "object",
    "oldObject",
    "dryRun",
    "userInfo",
    "groups",
    "metadata",
    "generateName",
    "labels",
    "spec",
    "template",
    "jobTemplate",
    "image",
    "imagePullSecrets",
    "serviceAccountName",
    "serviceAccount",
    "nodeSelector",
    "affinity",
    "nodeAffinity",
    "requiredDuringSchedulingIgnoredDuringExecution",
    "nodeSelectorTerms",
    "matchExpressions",
    "key",
    "operator",
    "In",
    "values",
    workloads.LABEL_ARCH,
    workloads.LABEL_OS,
    "~1",
    "~0",
    "/",
    "@sha256:",
)
_AUTH_TOKENS: Final = (
    *_JSON_TOKENS,
    "auths",
    "auth",
    "username",
    "password",
    "identitytoken",
    "registrytoken",
    "credsStore",
    "credHelpers",
    "https://",
    "http://",
    "/v1/",
    "*.",
    "index.docker.io",
    "docker.io",
    ":5000",
    "YWxpY2U6czNjcmV0",
    "token",
    "access_token",
    "expires_in",
)
_HEADER_TOKENS: Final = (
    "Bearer",
    "Basic",
    "Negotiate",
    "realm",
    "service",
    "scope",
    "error",
    "=",
    '"',
    ",",
    "\\",
    "https://",
    "http://",
    "[",
    "]",
    "@",
    "<",
    ">",
    ";",
    "rel",
    "next",
    "\n",
)
_REFERENCE_TOKENS: Final = (
    "/",
    ":",
    "@",
    ".",
    "-",
    "_",
    "__",
    "localhost",
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    ":443",
    "[::1]",
    "library/",
    "sha256:",
    "sha512:",
    DIGEST,
    "latest",
)

# -- Notation ----------------------------------------------------------------------------

JWS_MEDIA_TYPE: Final = "application/jose+json"
COSE_MEDIA_TYPE: Final = "application/cose"
NOTATION_TARGET: Final = signature_model.Target(OCI_MANIFEST, 555)


@functools.cache
def notation_pki() -> tuple[Any, Any, Any]:
    """(root certificate, signing key, signing certificate) of a fixed test CA (P-256)."""
    import datetime

    from cryptography import x509
    from cryptography.x509 import oid

    def key(label: bytes) -> ec.EllipticCurvePrivateKey:
        return ec.derive_private_key(
            int.from_bytes(hashlib.sha256(label).digest(), "big"), ec.SECP256R1()
        )

    def subject(cn: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(oid.NameOID.COUNTRY_NAME, "US"),
                x509.NameAttribute(oid.NameOID.STATE_OR_PROVINCE_NAME, "WA"),
                x509.NameAttribute(oid.NameOID.ORGANIZATION_NAME, "Fuzz"),
                x509.NameAttribute(oid.NameOID.COMMON_NAME, cn),
            ]
        )

    start = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    end = datetime.datetime(2125, 1, 1, tzinfo=datetime.UTC)
    usage = {
        "content_commitment": False,
        "key_encipherment": False,
        "data_encipherment": False,
        "key_agreement": False,
        "encipher_only": False,
        "decipher_only": False,
    }
    root_key, leaf_key = key(b"notation fuzz root"), key(b"notation fuzz leaf")
    root = (
        x509.CertificateBuilder()
        .subject_name(subject("root"))
        .issuer_name(subject("root"))
        .public_key(root_key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=False, key_cert_sign=True, crl_sign=True, **usage),
            critical=True,
        )
        .sign(root_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(subject("release"))
        .issuer_name(subject("root"))
        .public_key(leaf_key.public_key())
        .serial_number(2)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, **usage),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([oid.ExtendedKeyUsageOID.CODE_SIGNING]), False)
        .sign(root_key, hashes.SHA256())
    )
    return root, leaf_key, leaf


@functools.cache
def notation_authority() -> verify.NotationAuthority:
    from imageward.notation import trust

    root, _, _ = notation_pki()
    policy = trust.build_policy(
        authority="fuzz-notation",
        ca=trust.Store((root.public_bytes(serialization.Encoding.DER),)),
        identities=["x509.subject: C=US, ST=WA, O=Fuzz"],
    )
    return verify.NotationAuthority(name="fuzz-notation", policy=policy)


def notation_manifest(envelope: bytes, media_type: str) -> bytes:
    """The signature manifest notation pushes for an envelope of `DIGEST`."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.cncf.notary.signature",
            "config": {"mediaType": EMPTY_JSON, "digest": sha256(b"{}"), "size": 2},
            "layers": [
                {"mediaType": media_type, "digest": sha256(envelope), "size": len(envelope)}
            ],
            "subject": {"mediaType": OCI_MANIFEST, "digest": DIGEST, "size": 555},
        }
    ).encode()


def _verify_notation(envelope: bytes, media_type: str) -> None:
    found = verify.SignatureSet(
        bundle_manifests=(notation_manifest(envelope, media_type),),
        blobs={sha256(envelope): envelope},
    )
    result = verify.verify(
        DIGEST, found, [notation_authority()], threshold=1, target=NOTATION_TARGET
    )
    check_verification(result, signatures=1)


def _es256(data: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric import utils as asym_utils

    _, key, _ = notation_pki()
    r, s = asym_utils.decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def notation_payload(digest: str = DIGEST) -> bytes:
    return json.dumps(
        {"targetArtifact": {"mediaType": OCI_MANIFEST, "digest": digest, "size": 555}}
    ).encode()


def build_notation_jws(protected: bytes, payload: bytes) -> bytes:
    """A flattened JWS of `protected` (header JSON bytes) and `payload`, signed by the
    fixed signing key, with the fixed chain in x5c."""
    root, _, leaf = notation_pki()

    def b64url(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head, body = b64url(protected), b64url(payload)
    return json.dumps(
        {
            "payload": body,
            "protected": head,
            "header": {
                "x5c": [b64(c.public_bytes(serialization.Encoding.DER)) for c in (leaf, root)]
            },
            "signature": b64url(_es256(f"{head}.{body}".encode())),
        }
    ).encode()


def build_notation_cose(protected: bytes, payload: bytes) -> bytes:
    """A COSE_Sign1_Tagged of `protected` (header CBOR bytes) and `payload`, signed."""
    import cbor2

    root, _, leaf = notation_pki()
    signed = cbor2.dumps(["Signature1", protected, b"", payload])
    chain = [c.public_bytes(serialization.Encoding.DER) for c in (leaf, root)]
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {33: chain}, payload, _es256(signed)]))


def fuzz_notation_envelope(data: bytes) -> None:
    """Raw Notation envelopes (first byte: JWS or COSE) through `verify.verify`: a Check
    for every input, never a raise (unsigned: reaches the parsers and the chain)."""
    media_type = JWS_MEDIA_TYPE if selector(data) % 2 == 0 else COSE_MEDIA_TYPE
    _verify_notation(data[1:], media_type)


def fuzz_notation_jws(data: bytes) -> None:
    """A JWS protected header (the input) signed with the fixed key over a payload naming
    `DIGEST`: the header rules, crit handling and times behind a valid signature."""
    _verify_notation(build_notation_jws(data, notation_payload()), JWS_MEDIA_TYPE)


def fuzz_notation_cose(data: bytes) -> None:
    """A COSE protected header (the input, CBOR) signed with the fixed key."""
    _verify_notation(build_notation_cose(data, notation_payload()), COSE_MEDIA_TYPE)


def fuzz_notation_payload(data: bytes) -> None:
    """A Notation payload (the input) in a correctly signed JWS: the descriptor check."""
    protected = json.dumps(
        {
            "alg": "ES256",
            "cty": "application/vnd.cncf.notary.payload.v1+json",
            "crit": ["io.cncf.notary.signingScheme"],
            "io.cncf.notary.signingScheme": "notary.x509",
            "io.cncf.notary.signingTime": "2026-01-01T00:00:00Z",
        }
    ).encode()
    _verify_notation(build_notation_jws(protected, data), JWS_MEDIA_TYPE)


_NOTATION_TOKENS: Final = (
    *_JSON_TOKENS,
    "alg",
    "ES256",
    "PS256",
    "cty",
    "crit",
    "application/vnd.cncf.notary.payload.v1+json",
    "io.cncf.notary.signingScheme",
    "io.cncf.notary.signingTime",
    "io.cncf.notary.authenticSigningTime",
    "io.cncf.notary.expiry",
    "notary.x509",
    "notary.x509.signingAuthority",
    "2026-01-01T00:00:00Z",
    "targetArtifact",
    "mediaType",
    "digest",
    "size",
    DIGEST,
    OCI_MANIFEST,
)


TARGETS: Final[Mapping[str, Target]] = {
    target.name: target
    for target in (
        Target("reference", fuzz_reference, 1024, None, _REFERENCE_TOKENS),
        Target("manifest", fuzz_manifest, 16384, 1, _MANIFEST_TOKENS),
        Target("config", fuzz_config, 16384, 0, (*_MANIFEST_TOKENS, "User", "Labels", "created")),
        Target("legacy_manifest", fuzz_legacy_manifest, 16384, 0, _SIGNATURE_TOKENS),
        Target("legacy_payload", fuzz_legacy_payload, 8192, 0, _SIGNATURE_TOKENS),
        Target("referrer_manifest", fuzz_referrer_manifest, 16384, 0, _SIGNATURE_TOKENS),
        Target("bundle", fuzz_bundle, 16384, 0, _SIGNATURE_TOKENS),
        Target("dsse_statement", fuzz_dsse_statement, 8192, 1, _SIGNATURE_TOKENS),
        Target("keyless_legacy", fuzz_keyless_legacy, 32768, 0, _SIGNATURE_TOKENS),
        Target("admission_review", fuzz_admission_review, 16384, 0, _ADMISSION_TOKENS),
        Target("workload", fuzz_workload, 16384, 1, _ADMISSION_TOKENS),
        Target("docker_config", fuzz_docker_config, 8192, 0, _AUTH_TOKENS),
        Target("pull_secret", fuzz_pull_secret, 8192, 1, _AUTH_TOKENS),
        Target("challenge", fuzz_challenge, 2048, None, _HEADER_TOKENS),
        Target("token_response", fuzz_token_response, 4096, 0, _AUTH_TOKENS),
        Target("link", fuzz_link, 2048, None, _HEADER_TOKENS),
        Target("retry_after", fuzz_retry_after, 256, None, ("Mon, ", " GMT", "+0000", "1")),
        Target("error_body", fuzz_error_body, 16384, 0, (*_JSON_TOKENS, "errors", "code")),
        Target("notation_envelope", fuzz_notation_envelope, 16384, 1, _NOTATION_TOKENS),
        Target("notation_jws", fuzz_notation_jws, 4096, 0, _NOTATION_TOKENS),
        Target("notation_cose", fuzz_notation_cose, 4096, None, _NOTATION_TOKENS),
        Target("notation_payload", fuzz_notation_payload, 4096, 0, _NOTATION_TOKENS),
    )
}


def corpus_of(name: str) -> list[pathlib.Path]:
    """The seed inputs of a target, then the crashers kept for it (sorted, for replay)."""
    found: list[pathlib.Path] = []
    for folder in (CORPUS / name, CRASHERS / name):
        if folder.is_dir():
            found.extend(sorted(p for p in folder.iterdir() if p.is_file()))
    return found


def names(selected: Sequence[str] | None = None) -> list[str]:
    if not selected:
        return list(TARGETS)
    unknown = [name for name in selected if name not in TARGETS]
    if unknown:
        raise KeyError(f"unknown fuzz target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    return list(selected)
