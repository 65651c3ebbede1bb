"""Attestations without a registry: envelopes built byte-exactly as cosign writes them
(`tests.unit.signatures.build`), verified, judged, and the messages a developer reads."""

from __future__ import annotations

import base64
import datetime
import json
from typing import Any

import pytest

from imageward import errors
from imageward.attestations import cel, envelopes, rules
from imageward.attestations import evaluate as attestations_evaluate
from imageward.attestations import verify as attestations_verify
from imageward.policy import model
from imageward.registry import model as registry_model
from imageward.signatures import verify as signatures_verify
from tests.unit.signatures import build

VULN = model.VULN_PREDICATE_TYPE
NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)


def _scan(findings: list[tuple[str, str]], finished: datetime.datetime = NOW) -> dict[str, Any]:
    vulns = [{"VulnerabilityID": i, "Severity": s} for i, s in findings]
    return {
        "scanner": {"result": {"Results": [{"Target": "t", "Vulnerabilities": vulns}]}},
        "metadata": {"scanFinishedOn": finished.strftime("%Y-%m-%dT%H:%M:%SZ")},
    }


def _statement(digest: str, predicate: Any, predicate_type: str = VULN) -> bytes:
    return json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v0.1",
            "subject": [{"name": "x", "digest": {"sha256": digest[7:]}}],
            "predicateType": predicate_type,
            "predicate": predicate,
        }
    ).encode()


def _legacy_set(dsse: dict[str, Any], predicate_type: str = VULN) -> signatures_verify.SignatureSet:
    raw = json.dumps(dsse).encode()
    layer = {
        "mediaType": envelopes.DSSE_MEDIA_TYPE,
        "size": len(raw),
        "digest": build.digest_of(raw),
        "annotations": {"dev.cosignproject.cosign/signature": "", "predicateType": predicate_type},
    }
    manifest = json.dumps({"schemaVersion": 2, "layers": [layer]}).encode()
    return signatures_verify.SignatureSet(
        attestation_manifests=(manifest,), blobs={build.digest_of(raw): raw}
    )


def _bundle_set(
    dsse: dict[str, Any], subject: str, predicate_type: str = VULN
) -> signatures_verify.SignatureSet:
    manifest, blobs = build.referrer_manifest(
        build.key_bundle(dsse), subject, predicate_type=predicate_type
    )
    return signatures_verify.SignatureSet(bundle_manifests=(manifest,), blobs=blobs)


def _entry(
    key: build.PrivateKey, *, required: bool = True, conditions: tuple[str, ...] = (), **rule: Any
) -> attestations_evaluate.LoadedEntry:
    authority = build.key_authority("scanner", key)
    parsed = model.Attestation(
        name="gate",
        predicate_type=rule.pop("predicate_type", VULN),
        authorities=(model.Authority(name="scanner", key=model.KeyAuthority(pem="x")),),
        required=required,
        conditions=tuple(model.Condition(c, f"cond {i}") for i, c in enumerate(conditions)),
        **rule,
    )
    programs = tuple(cel.compile_condition(c) for c in conditions)
    return attestations_evaluate.LoadedEntry(parsed, (authority,), programs)


def _judge(
    entry: attestations_evaluate.LoadedEntry,
    found: signatures_verify.SignatureSet,
    digest: str,
) -> attestations_evaluate.EntryResult:
    verification = attestations_verify.verify(
        registry_model.Digest(digest), found, entry.authorities, entry.rule.predicate_type
    )
    return attestations_evaluate.evaluate_entry(entry, verification, now=NOW)


@pytest.mark.parametrize("form", ["legacy", "bundle"])
def test_both_formats_verify_and_the_rules_judge(
    release_key: build.PrivateKey, digest: registry_model.Digest, form: str
) -> None:
    dsse = build.envelope(_statement(digest, _scan([("CVE-1", "CRITICAL")])), release_key)
    found = _legacy_set(dsse) if form == "legacy" else _bundle_set(dsse, digest)
    rule = model.Vulnerabilities(forbidden_severities=("CRITICAL",))
    result = _judge(_entry(release_key, vulnerabilities=rule), found, digest)
    assert result.result == "fail"
    assert result.message == (
        "has 1 finding of a severity forbidden by vulnerabilities.forbiddenSeverities "
        "[CRITICAL]: CVE-1 (CRITICAL)"
    )


def test_another_key_another_digest_and_a_signature_bundle_do_not_count(
    release_key: build.PrivateKey,
    attacker_key: build.PrivateKey,
    digest: registry_model.Digest,
    other_digest: registry_model.Digest,
) -> None:
    entry = _entry(release_key)
    by_attacker = _legacy_set(build.envelope(_statement(digest, _scan([])), attacker_key))
    assert _judge(entry, by_attacker, digest).message == (
        "is verified by 0 of 1 authorities, under threshold 1 "
        "(scanner: attestation signature does not verify with key scanner)"
    )
    elsewhere = _legacy_set(build.envelope(_statement(other_digest, _scan([])), release_key))
    assert "attestation names another digest" in _judge(entry, elsewhere, digest).message
    # An image signature (the sign predicate) is not an attestation of the type.
    signature = _bundle_set(
        build.envelope(build.statement(digest), release_key), digest, build.SIGN_PREDICATE
    )
    assert _judge(entry, signature, digest).message == (
        f"has no attestation of predicateType {VULN} (required)"
    )
    # An unannounced bundle whose signed statement is of another type is refused as such.
    sbom = _legacy_set(
        build.envelope(_statement(digest, {}, "https://spdx.dev/Document"), release_key),
        predicate_type=VULN,  # the unsigned hint lies
    )
    assert "is of predicateType 'https://spdx.dev/Document'" in _judge(entry, sbom, digest).message


def test_optional_entry_absent_passes_present_is_judged(
    release_key: build.PrivateKey, digest: registry_model.Digest
) -> None:
    entry = _entry(
        release_key, required=False, conditions=("predicate.metadata.scanFinishedOn == ''",)
    )
    absent = _judge(entry, signatures_verify.SignatureSet(), digest)
    assert (absent.result, absent.message) == ("pass", "no attestation present: optional")
    present = _legacy_set(build.envelope(_statement(digest, _scan([])), release_key))
    assert _judge(entry, present, digest).message == "condition failed: cond 0"


def test_scan_age_ignores_and_their_expiry(
    release_key: build.PrivateKey, digest: registry_model.Digest
) -> None:
    old = NOW - datetime.timedelta(days=9, hours=3)
    rule = model.Vulnerabilities(
        forbidden_severities=("CRITICAL", "HIGH"),
        max_scan_age=model.Duration("168h", 168 * 3600),
        ignore=(
            model.Ignore("CVE-A", NOW + datetime.timedelta(days=1)),
            model.Ignore("cve-b", NOW - datetime.timedelta(days=1)),
        ),
    )
    findings = [("CVE-A", "CRITICAL"), ("CVE-B", "HIGH"), ("CVE-C", "LOW")]
    found = _legacy_set(build.envelope(_statement(digest, _scan(findings, old)), release_key))
    result = _judge(_entry(release_key, vulnerabilities=rule), found, digest)
    assert result.message == (
        "was scanned 9d3h ago (metadata.scanFinishedOn 2026-11-22T09:00:00Z), over "
        "vulnerabilities.maxScanAge 168h; has 1 finding of a severity forbidden by "
        "vulnerabilities.forbiddenSeverities [CRITICAL, HIGH]: CVE-B (HIGH, its ignore expired "
        "2026-11-30T12:00:00Z)"
    )
    fresh = _legacy_set(build.envelope(_statement(digest, _scan(findings[:1])), release_key))
    passed = _judge(_entry(release_key, vulnerabilities=rule), fresh, digest)
    assert passed.result == "pass"
    # A pass that an ignore's end (or the scan's age) will turn into a fail is not kept longer.
    assert passed.changes_at == NOW + datetime.timedelta(days=1)


def test_at_most_five_ids_then_a_count_and_the_newest_scan_decides(
    release_key: build.PrivateKey, digest: registry_model.Digest
) -> None:
    many = [(f"CVE-{i}", "CRITICAL") for i in range(8)]
    older = build.envelope(
        _statement(digest, _scan([], NOW - datetime.timedelta(days=1))), release_key
    )
    newer = build.envelope(_statement(digest, _scan(many)), release_key)
    raws = [json.dumps(d).encode() for d in (newer, older)]
    layers = [
        {"mediaType": envelopes.DSSE_MEDIA_TYPE, "size": len(r), "digest": build.digest_of(r)}
        for r in raws
    ]
    found = signatures_verify.SignatureSet(
        attestation_manifests=(json.dumps({"layers": layers}).encode(),),
        blobs={build.digest_of(r): r for r in raws},
    )
    rule = model.Vulnerabilities(forbidden_severities=("CRITICAL",))
    message = _judge(_entry(release_key, vulnerabilities=rule), found, digest).message
    assert message.endswith("CVE-3 (CRITICAL), CVE-4 (CRITICAL) and 3 more")
    assert message.startswith("has 8 findings")


def test_hostile_envelopes_are_refusals_with_their_reason(
    release_key: build.PrivateKey, digest: registry_model.Digest
) -> None:
    entry = _entry(release_key)
    layer = {
        "mediaType": envelopes.DSSE_MEDIA_TYPE,
        "size": 9 << 20,
        "digest": "sha256:" + "0" * 64,
    }
    oversized = signatures_verify.SignatureSet(
        attestation_manifests=(json.dumps({"layers": [layer]}).encode(),),
        problems={
            layer["digest"]: "is 9437184 bytes (per its descriptor), "
            "over the limit of 4194304 for one attestation"
        },
    )
    assert (
        "over the limit of 4194304 for one attestation" in _judge(entry, oversized, digest).message
    )
    garbage = _legacy_set({"payload": "%%%", "payloadType": "x", "signatures": [{"sig": "AA=="}]})
    result = _judge(entry, garbage, digest)
    assert result.result == "fail" and "not valid base64" in result.message


def test_unknown_time_and_a_trivy_report_without_results_refuse(
    release_key: build.PrivateKey, digest: registry_model.Digest
) -> None:
    custom = "https://acme.example/review/v1"
    entry = _entry(release_key, predicate_type=custom, max_age=model.Duration("24h", 86400))
    found = _legacy_set(
        build.envelope(_statement(digest, {"ok": True}, custom), release_key), custom
    )
    assert _judge(entry, found, digest).message == (
        f"has no time imageward can read for predicateType {custom} (looked for Timestamp), "
        "required by maxAge 24h"
    )
    grype = {"scanner": {"result": {"matches": []}}, "metadata": {}}
    rule = model.Vulnerabilities(forbidden_severities=("CRITICAL",))
    found = _legacy_set(build.envelope(_statement(digest, grype), release_key))
    assert "imageward reads Trivy's report layout" in (
        _judge(_entry(release_key, vulnerabilities=rule), found, digest).message
    )


def test_statement_times_by_type() -> None:
    assert (
        rules.statement_time(
            rules.SLSA_V1, {"runDetails": {"metadata": {"startedOn": "2026-01-01T00:00:00Z"}}}
        )[1]
        == "runDetails.metadata.startedOn"
    )
    assert rules.statement_time(rules.SPDX, {"creationInfo": {"created": "2026-01-01T00:00:00Z"}})[
        0
    ] == datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    assert (
        rules.statement_time(
            "https://cyclonedx.org/bom/v1.5",
            {"metadata": {"timestamp": "2026-01-01T00:00:00.123456789Z"}},
        )[0]
        is not None
    )


# -- CEL ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("prediate.x", "undeclared reference to 'prediate.x'"),
        ("predicate.x +", "Syntax error"),
        ("1 + 'a'", "found no matching overload for '_+_' applied to '(int, string)'"),
        ("duration('7d') > duration('1h')", "invalid duration literal '7d'"),
        ("'a'.matches('(')", "invalid regular expression literal '('"),
        ("size(predicate)", "must evaluate to a bool, not int"),
    ],
)
def test_bad_expressions_do_not_compile(expression: str, says: str) -> None:
    with pytest.raises(cel.CelError) as raised:
        cel.compile_condition(expression)
    assert says in raised.value.reason


def test_evaluation_errors_are_answers() -> None:
    program = cel.compile_condition("predicate.missing == 1")
    answer = cel.evaluate(program, {}, {}, NOW)
    assert answer.value is None and "missing" in answer.error
    bound = cel.compile_condition(
        "cel.bind(n, predicate.?count.orValue(0), n > 2) && "
        "'A,B'.lowerAscii().split(',').size() == 2 && "
        "timestamp(predicate.at) > now - duration('1h')"
    )
    assert bound.uses_now
    at = (NOW - datetime.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert cel.evaluate(bound, {}, {"count": 3, "at": at}, NOW).value is True
    huge = cel.evaluate(cel.compile_condition("predicate.n > 0"), {}, {"n": 2**70}, NOW)
    assert huge.value is None and huge.error


# -- the policy model ------------------------------------------------------------------------


def _policy(entry: dict[str, Any]) -> dict[str, Any]:
    authorities = [{"name": "k", "key": {"pem": build.public_pem(build.generate("p256"))}}]
    return {
        "metadata": {"name": "p"},
        "spec": {"rules": {"attestations": [{"authorities": authorities, **entry}]}},
    }


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        (
            {
                "name": "a",
                "predicateType": "x",
                "vulnerabilities": {"forbiddenSeverities": ["CRITICAL"]},
            },
            "vulnerabilities: reads the cosign vulnerability predicate",
        ),
        ({"name": "a", "predicateType": VULN, "maxAge": "7d"}, "no days: 7d is 168h"),
        (
            {
                "name": "a",
                "predicateType": VULN,
                "vulnerabilities": {"forbiddenSeverities": ["BAD"]},
            },
            "'BAD' is not one of CRITICAL",
        ),
        ({"name": "a", "predicateType": VULN, "threshold": 2}, "more than the 1 authorities"),
        (
            {
                "name": "a",
                "predicateType": VULN,
                "vulnerabilities": {"ignore": [{"id": "x", "until": "soon"}]},
            },
            "is not an RFC 3339 time",
        ),
    ],
)
def test_policy_model_refuses_mistakes(entry: dict[str, Any], says: str) -> None:
    with pytest.raises(errors.PolicyError) as raised:
        model.parse_policy(_policy(entry))
    assert says in str(raised.value)


def test_durations_read_as_go_reads_them() -> None:
    assert model.parse_duration("168h") == 168 * 3600
    assert model.parse_duration("1h30m") == 5400
    assert model.parse_duration("1.5h") == 5400
    with pytest.raises(ValueError):
        model.parse_duration("-1h")


def test_envelope_parsing_takes_either_base64(release_key: build.PrivateKey, digest: str) -> None:
    dsse = build.envelope(_statement(digest, {}), release_key)
    dsse["payload"] = (
        base64.urlsafe_b64encode(base64.b64decode(dsse["payload"])).decode().rstrip("=")
    )
    parsed = envelopes.parse_envelope(json.dumps(dsse).encode(), what="layer")
    assert parsed.payload_type == build.INTOTO


def test_one_attested_platform_never_vouches_for_its_sibling(
    release_key: build.PrivateKey,
    digest: registry_model.Digest,
    other_digest: registry_model.Digest,
) -> None:
    # An unattested index: each platform manifest a node could select must carry its own
    # attestation (or the index one); amd64 attested, arm64 not, is a refusal.
    entry = _entry(release_key)
    index = registry_model.Digest("sha256:" + "9" * 64)
    none = attestations_verify.verify(
        index, signatures_verify.SignatureSet(), entry.authorities, VULN
    )

    def pulled(label: str, subject: str, attested: bool) -> attestations_evaluate.Pulled:
        found = (
            _legacy_set(build.envelope(_statement(subject, _scan([])), release_key))
            if attested
            else signatures_verify.SignatureSet()
        )
        verification = attestations_verify.verify(
            registry_model.Digest(subject), found, entry.authorities, VULN
        )
        return attestations_evaluate.Pulled(label, registry_model.Digest(subject), verification)

    half = attestations_evaluate.evaluate_entry(
        entry,
        none,
        [pulled("linux/amd64", digest, True), pulled("linux/arm64", other_digest, False)],
        now=NOW,
    )
    assert half.result == "fail"
    assert "linux/arm64" in half.message
    both = attestations_evaluate.evaluate_entry(
        entry,
        none,
        [pulled("linux/amd64", digest, True), pulled("linux/arm64", other_digest, True)],
        now=NOW,
    )
    assert both.result == "pass", both.message
