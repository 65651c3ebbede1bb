"""Registry authentication as data: challenges, token requests, docker credentials.

No I/O. The client feeds this module what a registry answered (`WWW-Authenticate`
headers, token endpoint bodies) and what Kubernetes holds (pull Secrets, docker config
files), and sends the requests it builds.

How registries do it (distribution `docs/spec/auth/token.md`, Docker Hub, GHCR, Harbor):
a request without usable credentials gets 401 with `WWW-Authenticate: Bearer
realm=…,service=…,scope=…`; the client asks `realm` for a token for `scope` (with Basic
credentials, or none for anonymous pulls) and repeats the request with it. Basic-auth
registries (htpasswd, ECR's Basic realm) challenge with `Basic realm=…` instead.

Credential lookup follows kubelet (`pkg/credentialprovider/keyring.go`): docker config
keys may be `host`, `host:port`, `https://host/v1/`, `host/path` or `*.host`; an
image matches a key by host (per-label globs, same port) and path prefix; more
specific keys come first. Docker Hub's spellings (`docker.io`, `index.docker.io`,
`https://index.docker.io/v1/`, `registry-1.docker.io`) are one registry.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import json
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from imageward import errors, records
from imageward.registry import gojson, reference

#: Token values go into a header: printable ASCII only, so a hostile token endpoint
#: cannot inject header lines.
_TOKEN_RE = re.compile(r"[\x21-\x7e]{1,16384}")

#: Seconds a token lives when the endpoint does not say (distribution token spec).
DEFAULT_TOKEN_LIFETIME = 60

CLIENT_ID = "imageward"

SECRET_TYPE_DOCKERCONFIGJSON = "kubernetes.io/dockerconfigjson"
SECRET_TYPE_DOCKERCFG = "kubernetes.io/dockercfg"

_set = object.__setattr__  # how a frozen Record's __init__ sets its fields


class ChallengeError(ValueError):
    """A challenge, realm or token answer that cannot be used; the client adds where."""


# ---------------------------------------------------------------------------- challenges


class Challenge(records.Record):
    """One `WWW-Authenticate` challenge: a lower-case scheme and its parameters."""

    __slots__ = ("params", "scheme")
    scheme: str
    params: tuple[tuple[str, str], ...]

    def __init__(self, scheme: str, params: tuple[tuple[str, str], ...] = ()) -> None:
        _set(self, "scheme", scheme)
        _set(self, "params", params)

    def param(self, name: str) -> str | None:
        for key, value in self.params:
            if key == name:
                return value
        return None

    @property
    def realm(self) -> str | None:
        return self.param("realm")

    @property
    def service(self) -> str | None:
        return self.param("service")

    @property
    def scope(self) -> str | None:
        return self.param("scope")

    @property
    def error(self) -> str | None:
        """`insufficient_scope`, `invalid_token`…: why the registry refused, when it says."""
        return self.param("error")


_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _skip_spaces(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t":
        i += 1
    return i


def _read_token(text: str, i: int) -> tuple[str, int]:
    start = i
    while i < len(text) and text[i] in _TCHAR:
        i += 1
    return text[start:i], i


def _read_quoted(text: str, i: int) -> tuple[str, int]:
    """A quoted-string starting at the opening quote; an unterminated one runs to the end."""
    value: list[str] = []
    i += 1
    while i < len(text) and text[i] != '"':
        if text[i] == "\\" and i + 1 < len(text):
            i += 1
        value.append(text[i])
        i += 1
    return "".join(value), i + 1


def _parse_challenge_header(header: str) -> list[Challenge]:
    """RFC 7235 `#challenge`: schemes with comma-separated params, several per header."""
    challenges: list[Challenge] = []
    scheme: str | None = None
    params: list[tuple[str, str]] = []
    i = 0
    while i < len(header):
        i = _skip_spaces(header, i)
        if i < len(header) and header[i] == ",":
            i += 1
            continue
        word, j = _read_token(header, i)
        if not word:
            i += 1  # a character no grammar allows here: skip it rather than loop
            continue
        after = _skip_spaces(header, j)
        is_param = (
            after < len(header)
            and header[after] == "="
            and not (after + 1 < len(header) and header[after + 1] == "=")  # token68 "ab=="
        )
        if is_param and scheme is not None:
            value_start = _skip_spaces(header, after + 1)
            if value_start < len(header) and header[value_start] == '"':
                value, i = _read_quoted(header, value_start)
            else:
                value, i = _read_token(header, value_start)
            params.append((word.lower(), value))
            continue
        if is_param:  # a parameter before any scheme: nothing to attach it to
            i = after + 1
            continue
        if scheme is not None:
            challenges.append(Challenge(scheme, tuple(params)))
        scheme, params = word.lower(), []
        i = j
        # token68 (e.g. `Negotiate YWJj==`): a lone word, maybe `=`-padded, then a comma
        # or the end. It carries nothing a registry client uses: skip it.
        k = _skip_spaces(header, i)
        token68, end = _read_token(header, k)
        while end < len(header) and header[end] == "=":
            end += 1
        rest = _skip_spaces(header, end)
        if token68 and (rest >= len(header) or header[rest] == ","):
            i = rest
    if scheme is not None:
        challenges.append(Challenge(scheme, tuple(params)))
    return challenges


def parse_challenges(headers: Iterable[str]) -> tuple[Challenge, ...]:
    """Every challenge in the given `WWW-Authenticate` header values, in order."""
    found: list[Challenge] = []
    for header in headers:
        found.extend(_parse_challenge_header(header))
    return tuple(found)


def build_scope(repository: str, actions: Sequence[str] = ("pull",)) -> str:
    return f"repository:{repository}:{','.join(actions)}"


# ---------------------------------------------------------------------------- credentials


class Credentials(records.Record, hidden=("password", "identity_token", "registry_token")):
    """One set of registry credentials and where it came from (for messages, never secrets).

    `identity_token` is an OAuth2 refresh token (docker config `identitytoken`, what
    `docker login` to ACR stores); `registry_token` a bearer token used as is.
    """

    __slots__ = ("identity_token", "password", "registry_token", "source", "username")
    username: str | None
    password: str | None
    identity_token: str | None
    registry_token: str | None
    source: str

    def __init__(
        self,
        username: str | None = None,
        password: str | None = None,
        identity_token: str | None = None,
        registry_token: str | None = None,
        source: str = "",
    ) -> None:
        _set(self, "username", username)
        _set(self, "password", password)
        _set(self, "identity_token", identity_token)
        _set(self, "registry_token", registry_token)
        _set(self, "source", source)

    @property
    def fingerprint(self) -> str:
        """Identifies the secret values without revealing them (cache keys, de-duplication)."""
        material = "\0".join(
            value or ""
            for value in (self.username, self.password, self.identity_token, self.registry_token)
        )
        return hashlib.sha256(material.encode()).hexdigest()[:16]

    def describe(self) -> str:
        who = f"user {self.username!r}" if self.username else "a token"
        return f"{who} from {self.source}" if self.source else who


class AuthEntry(records.Record):
    """One key of a docker config: canonical host (may hold `*` labels), path prefix."""

    __slots__ = ("credentials", "host", "key", "path")
    key: str
    host: str
    path: str
    credentials: Credentials

    def __init__(self, key: str, host: str, path: str, credentials: Credentials) -> None:
        _set(self, "key", key)
        _set(self, "host", host)
        _set(self, "path", path)
        _set(self, "credentials", credentials)


class DockerConfig(records.Record):
    """The credentials of one source: a pull Secret, a docker config file, the operator's."""

    __slots__ = ("entries", "source")
    source: str
    entries: tuple[AuthEntry, ...]

    def __init__(self, source: str, entries: tuple[AuthEntry, ...] = ()) -> None:
        _set(self, "source", source)
        _set(self, "entries", entries)


def _parse_key(key: str) -> tuple[str, str]:
    value = key if "://" in key else f"https://{key}"
    parts = urllib.parse.urlsplit(value)
    host = parts.netloc.rpartition("@")[2]
    path = parts.path
    # Docker keeps the API version in old keys (`https://index.docker.io/v1/`).
    for prefix in ("/v1", "/v2"):
        if path == prefix or path.startswith(prefix + "/"):
            path = path[len(prefix) :]
    return reference.build_canonical_host(host), path.strip("/")


def _decode_auth(value: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError) as e:
        raise ValueError("`auth` is not base64 of user:password") from e
    username, sep, password = decoded.partition(":")
    if not sep:
        raise ValueError("`auth` decodes to no user:password pair")
    return username, password


def _go_field(document: Mapping[str, Any], name: str) -> tuple[str | None, Any]:
    """(key, value) of a field as kubelet's Go decoder finds it: in any letter case.

    `Auths` or `Username` fill kubelet's fields too, so reading only the exact key would
    leave imageward without the credentials kubelet pulls with. Two spellings of one
    field (Go takes the last) are refused rather than guessed.
    """
    folded = gojson.fold(name)
    keys = [key for key in document if isinstance(key, str) and gojson.fold(key) == folded]
    if len(keys) > 1:
        raise ValueError(f"keys {', '.join(map(repr, keys))} are one field to kubelet")
    return (keys[0], document[keys[0]]) if keys else (None, None)


def _optional_str(entry: Mapping[str, Any], name: str) -> str | None:
    value = _go_field(entry, name)[1]
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"`{name}` is not a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (`"\ud800"`): no header or hash can hold it
        raise ValueError(f"`{name}` is not valid Unicode") from None
    return value


def _parse_entry(key: str, entry: Any, source: str) -> AuthEntry | None:
    if not isinstance(entry, Mapping):
        raise ValueError("entry is not an object")
    username = _optional_str(entry, "username")
    password = _optional_str(entry, "password")
    auth = _optional_str(entry, "auth")
    if auth is not None:
        username, password = _decode_auth(auth)
    credentials = Credentials(
        username=username or None,
        password=password,
        identity_token=_optional_str(entry, "identitytoken"),
        registry_token=_optional_str(entry, "registrytoken"),
        source=f"{source} ({key})",
    )
    if not (credentials.username or credentials.identity_token or credentials.registry_token):
        return None  # `{}` entries (credsStore placeholders) hold nothing usable
    host, path = _parse_key(key)
    if not host:
        raise ValueError("no registry host")
    return AuthEntry(key=key, host=host, path=path, credentials=credentials)


def parse_docker_config(data: bytes | str | Mapping[str, Any], *, source: str) -> DockerConfig:
    """A `config.json` / `.dockerconfigjson` (`{"auths": {…}}`) or a legacy `.dockercfg`.

    `credsStore` and `credHelpers` are ignored: they run programs the operator does not
    have. Raises errors.CredentialsError naming `source` and the key, never a secret.
    """
    document: Any = data
    if isinstance(data, bytes | str):
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:  # deep nesting recurses
            raise errors.CredentialsError(source, f"not JSON: {e}") from e
    if not isinstance(document, Mapping):
        raise errors.CredentialsError(source, "not a JSON object")
    try:
        found, auths = _go_field(document, "auths")
    except ValueError as e:
        raise errors.CredentialsError(source, str(e)) from e
    if found is None:
        auths = document  # the legacy `.dockercfg` layout: registries at the top
    if auths is None:
        auths = {}
    if not isinstance(auths, Mapping):
        raise errors.CredentialsError(source, "`auths` is not an object")
    entries: list[AuthEntry] = []
    for key, entry in auths.items():
        if not isinstance(key, str):
            raise errors.CredentialsError(source, "a registry key is not a string")
        if key in ("credsStore", "credHelpers", "HttpHeaders", "psFormat"):
            continue  # legacy dockercfg has no such keys; config.json put at top level
        try:
            parsed = _parse_entry(key, entry, source)
        except ValueError as e:
            raise errors.CredentialsError(source, f"entry {key!r}: {e}") from e
        if parsed is not None:
            entries.append(parsed)
    return DockerConfig(source=source, entries=tuple(entries))


def parse_pull_secret(secret: Mapping[str, Any]) -> DockerConfig:
    """A Secret object (as the API returns it) of type dockerconfigjson or dockercfg."""
    metadata = secret.get("metadata") or {}
    name = f"{metadata.get('namespace', '')}/{metadata.get('name', '')}".strip("/")
    source = f"Secret {name}" if name else "Secret"
    kind = secret.get("type")
    if kind == SECRET_TYPE_DOCKERCONFIGJSON:
        field = ".dockerconfigjson"
    elif kind == SECRET_TYPE_DOCKERCFG:
        field = ".dockercfg"
    else:
        raise errors.CredentialsError(
            source,
            f"type {kind!r} is not {SECRET_TYPE_DOCKERCONFIGJSON} or {SECRET_TYPE_DOCKERCFG}",
        )
    data = secret.get("data") or {}
    string_data = secret.get("stringData") or {}
    if field in data:
        try:
            raw: bytes | str = base64.b64decode(data[field], validate=True)
        except (binascii.Error, ValueError, TypeError) as e:
            raise errors.CredentialsError(source, f"data[{field!r}] is not base64") from e
    elif field in string_data:
        raw = string_data[field]
    else:
        raise errors.CredentialsError(source, f"has no {field!r} key")
    return parse_docker_config(raw, source=source)


def _split_port(host: str) -> tuple[str, str]:
    if host.startswith("["):  # IPv6 literal
        end = host.find("]")
        return host[: end + 1], host[end + 2 :] if end + 1 < len(host) else ""
    name, sep, port = host.rpartition(":")
    return (name, port) if sep else (host, "")


def evaluate_host_match(pattern: str, host: str) -> bool:
    """kubelet's rule: same number of labels, each matching its glob, same port."""
    pattern_name, pattern_port = _split_port(pattern)
    name, port = _split_port(host)
    if pattern_port != port:
        return False
    pattern_labels, labels = pattern_name.split("."), name.split(".")
    if len(pattern_labels) != len(labels):
        return False
    return all(
        fnmatch.fnmatchcase(label, glob) for glob, label in zip(pattern_labels, labels, strict=True)
    )


def _path_matches(prefix: str, repository: str) -> bool:
    return not prefix or repository == prefix or repository.startswith(prefix + "/")


def _specificity(entry: AuthEntry) -> tuple[int, int]:
    return (0 if "*" in entry.host or "?" in entry.host else 1, len(entry.path))


def build_scoped_config(config: DockerConfig, registries: Iterable[str]) -> DockerConfig:
    """`config` with only the entries for registries matching one of the host globs
    (`registry.acme.internal:5000`, `*.acme.io`); every entry when none are given.

    Raises errors.ConfigurationError naming a glob that cannot be parsed.
    """
    from imageward.policy import globs  # policy imports registry: import late

    patterns = []
    for text in registries:
        try:
            patterns.append(globs.parse_host_pattern(text))
        except globs.PatternError as e:
            raise errors.ConfigurationError(f"credential scope {text!r}: {e}") from e
    if not patterns:
        return config
    kept = tuple(
        entry
        for entry in config.entries
        if any(globs.evaluate_host_pattern(pattern, entry.host) for pattern in patterns)
    )
    return records.replace(config, entries=kept)


def build_credential_chain(
    sources: Iterable[DockerConfig], registry: str, repository: str
) -> tuple[Credentials, ...]:
    """The credentials to try for `registry/repository`, in order, duplicates removed.

    Sources keep their order (pod pull secrets, then the ServiceAccount's, then the
    operator's); inside one, more specific keys (exact host, longer path) come first.
    Empty: no source has credentials for this registry, so pull anonymously (as kubelet
    does: it never falls back to anonymous once credentials matched).
    """
    registry = reference.build_canonical_host(registry)
    chain: list[Credentials] = []
    seen: set[str] = set()
    for source in sources:
        matching = [
            entry
            for entry in source.entries
            if evaluate_host_match(entry.host, registry) and _path_matches(entry.path, repository)
        ]
        matching.sort(key=_specificity, reverse=True)
        for entry in matching:
            fingerprint = entry.credentials.fingerprint
            if fingerprint not in seen:
                seen.add(fingerprint)
                chain.append(entry.credentials)
    return tuple(chain)


def build_basic_authorization(credentials: Credentials) -> str:
    pair = f"{credentials.username or ''}:{credentials.password or ''}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


# ---------------------------------------------------------------------------- tokens


class TokenRequest(records.Record, hidden=("body",)):
    """The request for a token that a challenge's realm answers (`build_token_request`)."""

    __slots__ = ("body", "headers", "method", "url")
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None

    def __init__(
        self,
        method: str,
        url: str,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes | None = None,
    ) -> None:
        _set(self, "method", method)
        _set(self, "url", url)
        _set(self, "headers", headers)
        _set(self, "body", body)


class Token(records.Record, hidden=("value",)):
    """A bearer token a realm answered with (`parse_token_response`), and until when to use it."""

    __slots__ = ("expires_at", "value")
    value: str
    expires_at: float
    """Monotonic seconds after which the token is not used (a margin before its expiry)."""

    def __init__(self, value: str, expires_at: float) -> None:
        _set(self, "value", value)
        _set(self, "expires_at", expires_at)

    @property
    def authorization(self) -> str:
        return f"Bearer {self.value}"


def build_token_request(
    challenge: Challenge,
    *,
    scopes: Sequence[str],
    credentials: Credentials | None,
    allow_plain_http: bool = False,
) -> TokenRequest:
    """The request to the challenge's realm for a token covering `scopes`.

    Basic credentials go in an Authorization header of a GET (Docker's flow); an
    identity token is an OAuth2 refresh token, POSTed as a form (containerd's flow).
    Credentials are never sent to a plain-HTTP realm unless the registry itself is
    reached over plain HTTP (`allow_plain_http`).
    """
    realm = challenge.realm
    if not realm:
        raise ChallengeError("Bearer challenge without a realm")
    try:
        parts = urllib.parse.urlsplit(realm)
        for value in (realm, challenge.service or ""):
            value.encode("utf-8")  # a lone surrogate (invalid UTF-8 in the header) cannot be sent
    except ValueError as e:  # urlsplit: a bad IPv6 literal; UnicodeEncodeError is a ValueError
        raise ChallengeError(f"token realm {realm[:200]!r} cannot be used: {e}") from e
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ChallengeError(f"token realm {realm[:200]!r} is not an http(s) URL")
    if parts.scheme == "http" and not allow_plain_http:
        raise ChallengeError(
            f"token realm {realm[:200]} is plain HTTP for an HTTPS registry; refusing to use it"
        )
    service = challenge.service
    if credentials is not None and credentials.identity_token:
        form = [("grant_type", "refresh_token"), ("client_id", CLIENT_ID)]
        if service:
            form.append(("service", service))
        if scopes:
            form.append(("scope", " ".join(scopes)))
        form.append(("refresh_token", credentials.identity_token))
        return TokenRequest(
            "POST",
            realm,
            (("Content-Type", "application/x-www-form-urlencoded"),),
            urllib.parse.urlencode(form).encode(),
        )
    query: list[tuple[str, str]] = []
    if service:
        query.append(("service", service))
    query.extend(("scope", scope) for scope in scopes)
    headers: tuple[tuple[str, str], ...] = ()
    if credentials is not None and credentials.username:
        query.append(("account", credentials.username))
        headers = (("Authorization", build_basic_authorization(credentials)),)
    url = realm
    if query:
        url += ("&" if parts.query else "?") + urllib.parse.urlencode(query)
    return TokenRequest("GET", url, headers)


def parse_token_response(body: bytes, *, now: float) -> Token:
    """The token a realm answered with, to be used until shortly before it expires."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # deep nesting recurses
        raise ChallengeError(f"token endpoint answered non-JSON: {body[:100]!r}") from e
    if not isinstance(document, Mapping):
        raise ChallengeError("token endpoint answered JSON that is not an object")
    value = document.get("token") or document.get("access_token")
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise ChallengeError("token endpoint answered no usable token")
    lifetime = document.get("expires_in", DEFAULT_TOKEN_LIFETIME)
    # Compared, never converted, first: float() of a 400-digit integer raises OverflowError;
    # NaN, infinities and lifetimes past 2**53 s fall back to the default too.
    if (
        isinstance(lifetime, bool)
        or not isinstance(lifetime, int | float)
        or not 0 < lifetime < 2**53
    ):
        lifetime = DEFAULT_TOKEN_LIFETIME
    # Stop using it a little early (10%, at least 5 s) so it never expires in flight.
    margin = max(5.0, float(lifetime) * 0.1)
    return Token(value=value, expires_at=now + max(0.0, float(lifetime) - margin))
