"""A small Docker-registry token issuer, so tests meet Bearer-token auth as real registries use it.

The registry (distribution 2.8, `auth.token`) challenges with
`WWW-Authenticate: Bearer realm=…,service=…,scope=…`; clients then GET
`<realm>?service=…&scope=repository:NAME:pull,push` (with basic credentials or none), or
POST the OAuth2 password form there (containerd does when it has a password), and
retry with the token. Tokens are ES256 JWTs whose header carries the signing certificate
in `x5c`; the registry trusts them because that self-signed certificate is its
`rootcertbundle`.

Access rules mirror Docker Hub's behaviour: bad credentials get 401 from the issuer; a
known user or an anonymous caller asking for something it may not have gets a token
with less (or no) access, and the registry then refuses the request itself.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import fnmatch
import hmac
import http.server
import json
import pathlib
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509.oid import NameOID

DEFAULT_SERVICE = "imageward-local-registry"
DEFAULT_ISSUER = "imageward-local-token-issuer"

#: Actions a repository writer gets. distribution asks for "delete" on DELETE; "*" is
#: what some clients ask for to mean everything.
WRITE_ACTIONS = frozenset({"pull", "push", "delete", "*"})
READ_ACTIONS = frozenset({"pull"})


@dataclasses.dataclass(frozen=True, slots=True)
class Account:
    """A user of the token issuer and the repositories it may use.

    Patterns are `fnmatch` globs over repository names (`*` also crosses `/`).
    """

    password: str
    #: repositories this account may pull, push and delete in
    write: tuple[str, ...] = ("*",)
    #: repositories this account may only pull from (on top of `write`)
    read: tuple[str, ...] = ()
    #: may list the catalog (`registry:catalog:*`)
    catalog: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class Access:
    """One entry of a scope request or of a token's `access` claim."""

    type: str
    name: str
    actions: tuple[str, ...]

    def to_claim(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


@dataclasses.dataclass(frozen=True, slots=True)
class TokenRequest:
    """What the issuer saw and answered; tests use these to count token fetches."""

    username: str | None
    service: str | None
    scopes: tuple[str, ...]
    status: int
    granted: tuple[Access, ...]
    method: str = "GET"  # POST: the OAuth2 password flow


def parse_scope(scope: str) -> list[Access]:
    """Parse one `scope` value: space-separated `type:name:actions` entries.

    The name may itself contain ':' (a registry host with a port), so the type is cut at
    the first colon and the actions at the last.
    """
    result = []
    for item in scope.split():
        type_, sep, rest = item.partition(":")
        name, sep2, actions = rest.rpartition(":")
        if not sep or not sep2 or not type_ or not name:
            raise ValueError(f"malformed scope entry {item!r}")
        result.append(Access(type_, name, tuple(a for a in actions.split(",") if a)))
    return result


def evaluate_access(
    requested: Access,
    *,
    account: Account | None,
    public_repositories: Sequence[str],
) -> Access | None:
    """The part of `requested` granted to `account` (None: anonymous); None if nothing."""
    allowed: frozenset[str] = frozenset()
    if requested.type == "repository":
        if account is not None:
            if _matches(requested.name, account.write):
                allowed = WRITE_ACTIONS
            elif _matches(requested.name, account.read):
                allowed = READ_ACTIONS
        if not allowed and _matches(requested.name, public_repositories):
            allowed = READ_ACTIONS
    elif (requested.type, requested.name) == ("registry", "catalog") and account is not None:
        allowed = frozenset({"*"}) if account.catalog else frozenset()
    granted = tuple(a for a in requested.actions if a in allowed)
    return Access(requested.type, requested.name, granted) if granted else None


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


# -- JWT --------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def encode_jwt(
    header: Mapping[str, Any], claims: Mapping[str, Any], key: ec.EllipticCurvePrivateKey
) -> str:
    """Sign a compact JWS with ES256/ES384 (by the key's curve).

    JWS wants the raw fixed-width r||s pair, not the DER that `cryptography` returns.
    """
    hash_algorithm: hashes.HashAlgorithm
    if isinstance(key.curve, ec.SECP256R1):
        alg, hash_algorithm, width = "ES256", hashes.SHA256(), 32
    elif isinstance(key.curve, ec.SECP384R1):
        alg, hash_algorithm, width = "ES384", hashes.SHA384(), 48
    else:
        raise ValueError(f"unsupported curve {key.curve.name}")
    signing_input = f"{b64url(_json({**header, 'alg': alg}))}.{b64url(_json(claims))}"
    der = key.sign(signing_input.encode("ascii"), ec.ECDSA(hash_algorithm))
    r, s = utils.decode_dss_signature(der)
    signature = r.to_bytes(width, "big") + s.to_bytes(width, "big")
    return f"{signing_input}.{b64url(signature)}"


def decode_jwt_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a compact JWT, without checking the signature (for tests)."""
    header, claims, _ = token.split(".")
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(claims))


def verify_jwt(token: str, public_key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    """Check an ES256 signature and return the claims (for tests of the issuer itself)."""
    header, claims, signature = token.split(".")
    raw = b64url_decode(signature)
    half = len(raw) // 2
    der = utils.encode_dss_signature(
        int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
    )
    hash_algorithm = hashes.SHA256() if half == 32 else hashes.SHA384()
    public_key.verify(der, f"{header}.{claims}".encode("ascii"), ec.ECDSA(hash_algorithm))
    result: dict[str, Any] = json.loads(b64url_decode(claims))
    return result


def _self_signed(key: ec.EllipticCurvePrivateKey, common_name: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate clock skew
        .not_valid_after(now + datetime.timedelta(days=30))
        # A CA certificate so Go's x509 verification accepts it as a trust root.
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )


# -- the HTTP server --------------------------------------------------------------------


class TokenIssuer:
    """A token endpoint on 127.0.0.1, served by a thread.

    `realm` is the URL to put in the registry's `auth.token.realm`, `certificate_pem` the
    content of its `rootcertbundle`.
    """

    def __init__(
        self,
        *,
        accounts: Mapping[str, Account],
        public_repositories: Sequence[str] = (),
        service: str = DEFAULT_SERVICE,
        issuer: str = DEFAULT_ISSUER,
        ttl: int = 300,
        host: str = "127.0.0.1",
    ) -> None:
        self.accounts = dict(accounts)
        self.public_repositories = tuple(public_repositories)
        self.service = service
        self.issuer = issuer
        self.ttl = ttl
        self.host = host
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.certificate = _self_signed(self.key, issuer)
        self.certificate_pem = self.certificate.public_bytes(serialization.Encoding.PEM)
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        self._x5c = [base64.b64encode(der).decode("ascii")]  # x5c is standard base64 DER
        self.requests: list[TokenRequest] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def __enter__(self) -> TokenIssuer:
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    def start(self) -> TokenIssuer:
        if self._server is not None:
            raise RuntimeError("token issuer already started")
        server = _Server((self.host, 0), _Handler)
        server.issuer = self
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"token-issuer-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def write_root_cert_bundle(self, path: pathlib.Path) -> pathlib.Path:
        path.write_bytes(self.certificate_pem)
        return path

    def token_requests(self) -> list[TokenRequest]:
        with self._lock:
            return list(self.requests)

    # -- decisions, usable without HTTP ------------------------------------------------

    def authenticate(self, username: str, password: str) -> Account | None:
        account = self.accounts.get(username)
        if account is None:
            return None
        # Constant-time compare: habits from real issuers cost nothing here.
        if not hmac.compare_digest(account.password.encode(), password.encode()):
            return None
        return account

    def grant(self, account: Account | None, scopes: Iterable[str]) -> list[Access]:
        granted = []
        for scope in scopes:
            for requested in parse_scope(scope):
                access = evaluate_access(
                    requested, account=account, public_repositories=self.public_repositories
                )
                if access is not None:
                    granted.append(access)
        return granted

    def issue(self, subject: str, access: Sequence[Access], *, now: float | None = None) -> str:
        issued = int(now if now is not None else time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,  # distribution 2.8 reads `aud` as a single string
            "exp": issued + self.ttl,
            "nbf": issued - 1,
            "iat": issued,
            "jti": secrets.token_hex(16),
            "access": [a.to_claim() for a in access],
        }
        header = {"typ": "JWT", "x5c": self._x5c}
        return encode_jwt(header, claims, self.key)

    def _record(self, request: TokenRequest) -> None:
        with self._lock:
            self.requests.append(request)


class _Server(http.server.ThreadingHTTPServer):
    issuer: TokenIssuer
    daemon_threads = True


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server  # HTTP/1.0 (the default): one request per connection, nothing lingers

    def log_message(self, format: str, *args: Any) -> None:
        # Requests are kept in TokenIssuer.requests; stderr noise would only clutter pytest.
        pass

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/token":
            self._send_json(404, {"errors": [{"code": "NOT_FOUND", "message": url.path}]})
            return
        query = urllib.parse.parse_qs(url.query)
        username, password = self._basic_credentials()
        self._answer(
            username=username,
            password=password,
            service=query.get("service", [None])[0],
            scopes=tuple(query.get("scope", [])),
            oauth=False,
        )

    def do_POST(self) -> None:
        # The OAuth2 form flow (distribution's spec/auth/oauth.md). containerd uses it
        # whenever it has a password and falls back to GET only on 400/401/404.
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        if url.path != "/token":
            self._send_json(404, {"errors": [{"code": "NOT_FOUND", "message": url.path}]})
            return
        grant_type = form.get("grant_type", [""])[0]
        if grant_type != "password":
            self._send_json(
                400, {"error": "unsupported_grant_type", "error_description": grant_type}
            )
            return
        self._answer(
            username=form.get("username", [""])[0],
            password=form.get("password", [""])[0],
            service=form.get("service", [None])[0],
            scopes=tuple(" ".join(form.get("scope", [])).split()),
            oauth=True,
        )

    def _answer(
        self,
        *,
        username: str | None,
        password: str | None,
        service: str | None,
        scopes: tuple[str, ...],
        oauth: bool,
    ) -> None:
        issuer = self.server.issuer

        def record(status: int, granted: Sequence[Access] = ()) -> None:
            issuer._record(
                TokenRequest(
                    username, service, scopes, status, tuple(granted), "POST" if oauth else "GET"
                )
            )

        if service != issuer.service:
            record(400)
            self._send_json(
                400, {"errors": [{"code": "UNSUPPORTED", "message": f"service {service!r}"}]}
            )
            return
        account = None
        if username is not None:
            account = issuer.authenticate(username, password or "")
            if account is None:
                record(401)
                self._send_json(
                    401,
                    {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]},
                    headers={"WWW-Authenticate": f'Basic realm="{issuer.realm}"'},
                )
                return
        try:
            granted = issuer.grant(account, scopes)
        except ValueError as e:
            record(400)
            self._send_json(400, {"errors": [{"code": "INVALID_SCOPE", "message": str(e)}]})
            return
        now = time.time()
        token = issuer.issue(username or "", granted, now=now)
        record(200, granted)
        issued_at = datetime.datetime.fromtimestamp(int(now), datetime.UTC)
        body: dict[str, Any] = {
            "access_token": token,
            "expires_in": issuer.ttl,
            "issued_at": issued_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if oauth:
            body["scope"] = " ".join(str(a) for a in granted)
        else:
            body["token"] = token
        self._send_json(200, body)

    def _basic_credentials(self) -> tuple[str | None, str | None]:
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or not value:
            return None, None
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return "", ""  # unreadable credentials are bad credentials, not anonymous
        username, _, password = decoded.partition(":")
        return username, password

    def _send_json(
        self, status: int, body: Mapping[str, Any], *, headers: Mapping[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
