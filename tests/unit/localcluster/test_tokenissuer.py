"""The token issuer's decisions and JWTs, without a registry (its server only on loopback)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request

import cryptography.exceptions
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from imageward.localcluster import tokenissuer

ACCOUNTS = {
    "admin": tokenissuer.Account(password="a"),
    "reader": tokenissuer.Account(password="r", write=(), read=("*",)),
    "team": tokenissuer.Account(password="t", write=("team/*",), read=("shared/*",), catalog=False),
}


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("repository:a/b:pull", [tokenissuer.Access("repository", "a/b", ("pull",))]),
        (
            "repository:host:5000/a:pull,push",
            [tokenissuer.Access("repository", "host:5000/a", ("pull", "push"))],
        ),
        (
            "repository:a:pull registry:catalog:*",
            [
                tokenissuer.Access("repository", "a", ("pull",)),
                tokenissuer.Access("registry", "catalog", ("*",)),
            ],
        ),
    ],
)
def test_parse_scope(scope: str, expected: list[tokenissuer.Access]) -> None:
    assert tokenissuer.parse_scope(scope) == expected


@pytest.mark.parametrize("scope", ["repository", "repository:a", ":a:pull"])
def test_parse_scope_refuses_malformed(scope: str) -> None:
    with pytest.raises(ValueError):
        tokenissuer.parse_scope(scope)


@pytest.mark.parametrize(
    ("user", "scope", "granted"),
    [
        ("admin", "repository:x/y:pull,push", "repository:x/y:pull,push"),
        ("admin", "repository:x/y:delete", "repository:x/y:delete"),
        ("reader", "repository:x/y:pull,push", "repository:x/y:pull"),
        ("team", "repository:team/app:pull,push", "repository:team/app:pull,push"),
        ("team", "repository:shared/base:pull,push", "repository:shared/base:pull"),
        ("team", "repository:other/app:pull", None),
        ("team", "repository:public/app:pull,push", "repository:public/app:pull"),
        (None, "repository:public/app:pull,push", "repository:public/app:pull"),
        (None, "repository:private/app:pull", None),
        (None, "registry:catalog:*", None),
        ("admin", "registry:catalog:*", "registry:catalog:*"),
        ("team", "registry:catalog:*", None),
    ],
)
def test_grants(user: str | None, scope: str, granted: str | None) -> None:
    issuer = tokenissuer.TokenIssuer(accounts=ACCOUNTS, public_repositories=["public/*"])
    account = ACCOUNTS[user] if user else None

    result = issuer.grant(account, [scope])

    assert [str(a) for a in result] == ([granted] if granted else [])


def test_authenticate() -> None:
    issuer = tokenissuer.TokenIssuer(accounts=ACCOUNTS)
    assert issuer.authenticate("admin", "a") is ACCOUNTS["admin"]
    assert issuer.authenticate("admin", "b") is None
    assert issuer.authenticate("nobody", "a") is None


def test_token_is_an_es256_jwt_with_the_certificate_in_x5c() -> None:
    issuer = tokenissuer.TokenIssuer(accounts=ACCOUNTS, ttl=120)
    access = [tokenissuer.Access("repository", "a", ("pull",))]

    token = issuer.issue("admin", access, now=1_700_000_000)

    header, claims = tokenissuer.decode_jwt_unverified(token)
    assert header["alg"] == "ES256" and header["typ"] == "JWT"
    certificate = x509.load_der_x509_certificate(base64.b64decode(header["x5c"][0]))
    assert certificate == x509.load_pem_x509_certificate(issuer.certificate_pem)
    public_key = certificate.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert tokenissuer.verify_jwt(token, public_key) == claims
    assert claims["iss"] == tokenissuer.DEFAULT_ISSUER
    assert claims["aud"] == tokenissuer.DEFAULT_SERVICE
    assert claims["sub"] == "admin"
    assert (claims["iat"], claims["exp"]) == (1_700_000_000, 1_700_000_120)
    assert claims["nbf"] <= claims["iat"]
    assert claims["access"] == [{"type": "repository", "name": "a", "actions": ["pull"]}]
    assert len(claims["jti"]) == 32
    assert len(base64.urlsafe_b64decode(token.split(".")[2] + "==")) == 64  # raw r||s


def test_tampered_token_does_not_verify() -> None:
    issuer = tokenissuer.TokenIssuer(accounts=ACCOUNTS)
    header, _claims, signature = issuer.issue("admin", []).split(".")
    forged = tokenissuer.b64url(json.dumps({"sub": "root"}).encode())

    with pytest.raises(cryptography.exceptions.InvalidSignature):
        tokenissuer.verify_jwt(f"{header}.{forged}.{signature}", issuer.key.public_key())


def get(url: str, auth: str | None = None) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


def test_http_endpoint() -> None:
    with tokenissuer.TokenIssuer(accounts=ACCOUNTS, public_repositories=["public/*"]) as issuer:
        base = f"{issuer.realm}?service={issuer.service}"

        status, body = get(base + "&scope=repository:x:pull,push", auth="admin:a")
        assert status == 200
        assert body["token"] == body["access_token"]
        assert body["expires_in"] == issuer.ttl
        assert isinstance(body["issued_at"], str) and body["issued_at"].endswith("Z")

        assert get(base + "&scope=repository:x:pull", auth="admin:wrong")[0] == 401
        assert get(f"{issuer.realm}?service=other", auth="admin:a")[0] == 400
        assert get(base + "&scope=garbage", auth="admin:a")[0] == 400

        status, body = get(base + "&scope=repository:private/x:pull")
        assert status == 200
        _, claims = tokenissuer.decode_jwt_unverified(str(body["token"]))
        assert claims["access"] == [] and claims["sub"] == ""

        seen = [(r.username, r.status) for r in issuer.token_requests()]
        assert seen == [("admin", 200), ("admin", 401), ("admin", 400), ("admin", 400), (None, 200)]
    issuer.stop()  # idempotent


def post(url: str, form: dict[str, str]) -> tuple[int, dict[str, object]]:
    data = urllib.parse.urlencode(form).encode()
    try:
        with urllib.request.urlopen(url, data=data, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


def test_oauth2_password_flow() -> None:
    with tokenissuer.TokenIssuer(accounts=ACCOUNTS) as issuer:
        form = {
            "grant_type": "password",
            "username": "team",
            "password": "t",
            "service": issuer.service,
            "client_id": "containerd-client",
            "scope": "repository:team/a:pull,push repository:other/b:pull",
        }

        status, body = post(issuer.realm, form)
        assert status == 200
        assert body["scope"] == "repository:team/a:pull,push"
        assert "token" not in body
        _, claims = tokenissuer.decode_jwt_unverified(str(body["access_token"]))
        assert claims["access"] == [
            {"type": "repository", "name": "team/a", "actions": ["pull", "push"]}
        ]

        assert post(issuer.realm, {**form, "password": "wrong"})[0] == 401
        assert post(issuer.realm, {**form, "grant_type": "refresh_token"})[0] == 400
        assert [(r.method, r.status) for r in issuer.token_requests()] == [
            ("POST", 200),
            ("POST", 401),
        ]
