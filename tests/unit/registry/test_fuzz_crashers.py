"""Inputs the fuzzer (`make fuzz`) found that broke a registry parser's contract.

Each input is kept as found (or deepened, for nesting: the minimised one sat exactly at
the recursion limit under atheris) in `tests/fuzz/crashers/<target>/`, and each test
asserts the clear error the parser now gives. Before the fixes every one of them raised
something else (RecursionError, OverflowError, UnicodeEncodeError, a plain ValueError),
which the registry client turns into a `lookup` failure, and `failurePolicy: Ignore`
admits those.
"""

from __future__ import annotations

import base64
import json

import pytest

from imageward import errors
from imageward.registry import auth, manifests, reference, routes
from tests.fuzz import targets

DEEP = b"[" * 100_000


def crasher(target: str, name: str) -> bytes:
    return (targets.CRASHERS / target / name).read_bytes()


def test_a_second_port_is_not_hidden_by_dropping_443() -> None:
    # `c:443:443` lost one `:443` to canonicalisation and then passed as host `c:443`.
    text = crasher("reference", "host-with-two-ports").decode()
    with pytest.raises(errors.InvalidReferenceError) as excinfo:
        reference.parse_reference(text)
    assert excinfo.value.reason == "invalid registry host 'c:443:443'"


def test_a_host_that_only_lower_cases_to_ascii_is_refused() -> None:
    # KELVIN SIGN lower-cases to an ASCII "k": `K.io` passed as host `k.io`.
    text = crasher("reference", "kelvin-sign-host").decode()
    assert text == "\u212a.io/x"
    with pytest.raises(errors.InvalidReferenceError) as excinfo:
        reference.parse_reference(text)
    assert excinfo.value.reason == "invalid registry host '\u212a.io'"


@pytest.mark.parametrize("body", [crasher("manifest", "deep-nesting")[1:], DEEP])
def test_deeply_nested_manifest_is_a_manifest_error(body: bytes) -> None:
    with pytest.raises(manifests.ManifestError, match=r"^not JSON \(RecursionError: "):
        manifests.parse_manifest(body, content_type=manifests.OCI_MANIFEST)


@pytest.mark.parametrize("body", [crasher("config", "deep-nesting"), DEEP])
def test_deeply_nested_config_is_a_manifest_error(body: bytes) -> None:
    with pytest.raises(manifests.ManifestError, match=r"^image config is not JSON \(Recursion"):
        manifests.parse_config(body)


@pytest.mark.parametrize("body", [crasher("docker_config", "deep-nesting"), DEEP])
def test_deeply_nested_docker_config_is_a_credentials_error(body: bytes) -> None:
    with pytest.raises(errors.CredentialsError, match="not JSON: maximum recursion depth"):
        auth.parse_docker_config(body, source="Secret shop/pull")


def test_deeply_nested_pull_secret_is_a_credentials_error() -> None:
    content = crasher("pull_secret", "deep-nesting")[1:]
    secret = {
        "metadata": {"name": "pull", "namespace": "shop"},
        "type": auth.SECRET_TYPE_DOCKERCONFIGJSON,
        "data": {".dockerconfigjson": base64.b64encode(content).decode()},
    }
    with pytest.raises(errors.CredentialsError) as excinfo:
        auth.parse_pull_secret(secret)
    assert excinfo.value.source == "Secret shop/pull"
    assert excinfo.value.reason.startswith("not JSON: maximum recursion depth")


@pytest.mark.parametrize(
    ("data", "source"),
    [
        (crasher("docker_config", "lone-surrogate-token").decode("utf-8", "surrogateescape"), "f"),
        (crasher("pull_secret", "lone-surrogate-token")[1:], "f"),
    ],
)
def test_a_credential_no_header_can_hold_is_refused_at_parse(
    data: str | bytes, source: str
) -> None:
    # It parsed, then Credentials.fingerprint (and the Authorization header) raised
    # UnicodeEncodeError for every lookup of a pod naming the Secret.
    with pytest.raises(errors.CredentialsError) as excinfo:
        auth.parse_docker_config(data, source=source)
    assert excinfo.value.reason.endswith("`registrytoken` is not valid Unicode")


@pytest.mark.parametrize(
    "field", ["username", "password", "auth", "identitytoken", "registrytoken"]
)
def test_every_credential_field_is_checked_for_lone_surrogates(field: str) -> None:
    config = json.dumps({"auths": {"registry.test": {"username": "u", field: "a\ud800"}}})
    with pytest.raises(errors.CredentialsError, match=f"`{field}` is not valid Unicode"):
        auth.parse_docker_config(config.encode(), source="f")


@pytest.mark.parametrize("body", [crasher("token_response", "deep-nesting"), DEEP])
def test_deeply_nested_token_answer_is_a_challenge_error(body: bytes) -> None:
    with pytest.raises(auth.ChallengeError, match="token endpoint answered non-JSON"):
        auth.parse_token_response(body, now=0.0)


def test_a_huge_token_lifetime_falls_back_to_the_default() -> None:
    body = crasher("token_response", "huge-expires-in")
    assert len(str(json.loads(body)["expires_in"])) > 300  # float() of it: OverflowError
    token = auth.parse_token_response(body, now=1000.0)
    assert token.expires_at == 1000.0 + auth.DEFAULT_TOKEN_LIFETIME - 6.0  # 10% margin, min 5 s


@pytest.mark.parametrize("lifetime", ["NaN", "Infinity", "1e400", str(2**53)])
def test_non_finite_token_lifetimes_fall_back_to_the_default(lifetime: str) -> None:
    token = auth.parse_token_response(f'{{"token":"t","expires_in":{lifetime}}}'.encode(), now=0)
    assert token.expires_at == auth.DEFAULT_TOKEN_LIFETIME - 6.0


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("realm-bad-ipv6-bracket", "Invalid IPv6 URL"),
        ("realm-empty-ipv6-literal", "does not appear to be an IPv4 or IPv6 address"),
        ("service-invalid-utf8", "surrogates not allowed"),
    ],
)
def test_unusable_realms_and_services_are_challenge_errors(name: str, message: str) -> None:
    header = crasher("challenge", name).decode("utf-8", "surrogateescape")
    (challenge,) = auth.parse_challenges([header])
    with pytest.raises(auth.ChallengeError, match="cannot be used: ") as excinfo:
        auth.build_token_request(challenge, scopes=["repository:a:pull"], credentials=None)
    assert message in str(excinfo.value)


@pytest.mark.parametrize(
    "name", ["ten-digit-year", "ten-digit-year-hour", "fourteen-digit-year", "superscript-digit"]
)
def test_unreadable_retry_after_is_none(name: str) -> None:
    value = crasher("retry_after", name).decode()
    assert routes.parse_retry_after(value, now=0.0) is None


@pytest.mark.parametrize("body", [crasher("error_body", "deep-nesting"), DEEP])
def test_deeply_nested_error_body_is_shown_as_text(body: bytes) -> None:
    assert routes.parse_error_body(body) == body[:300].decode()
