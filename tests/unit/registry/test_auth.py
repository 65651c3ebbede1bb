"""Challenges, token requests and credential lookup, from headers and documents as
registries and Kubernetes write them."""

from __future__ import annotations

import base64
import json
import pathlib
import re
import urllib.parse

import pytest

from imageward import errors
from imageward.registry import auth, configpaths

# WWW-Authenticate headers as real registries send them.
RECORDED_CHALLENGES = [
    (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/nginx:pull"',
        "bearer",
        {
            "realm": "https://auth.docker.io/token",
            "service": "registry.docker.io",
            "scope": "repository:library/nginx:pull",
        },
    ),
    (
        'Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:acme/web:pull"',
        "bearer",
        {
            "realm": "https://ghcr.io/token",
            "service": "ghcr.io",
            "scope": "repository:acme/web:pull",
        },
    ),
    (
        'Basic realm="https://123456789012.dkr.ecr.us-east-1.amazonaws.com/",service="ecr.amazonaws.com"',
        "basic",
        {
            "realm": "https://123456789012.dkr.ecr.us-east-1.amazonaws.com/",
            "service": "ecr.amazonaws.com",
        },
    ),
    ('Basic realm="imageward-local"', "basic", {"realm": "imageward-local"}),
    (
        'Bearer realm="https://quay.io/v2/auth",service="quay.io",'
        'scope="repository:a/b:pull",error="insufficient_scope"',
        "bearer",
        {
            "realm": "https://quay.io/v2/auth",
            "service": "quay.io",
            "scope": "repository:a/b:pull",
            "error": "insufficient_scope",
        },
    ),
]


@pytest.mark.parametrize(("header", "scheme", "params"), RECORDED_CHALLENGES)
def test_recorded_challenges(header: str, scheme: str, params: dict[str, str]) -> None:
    (challenge,) = auth.parse_challenges([header])
    assert challenge.scheme == scheme
    assert dict(challenge.params) == params


def test_several_challenges_token68_and_escapes() -> None:
    challenges = auth.parse_challenges(
        [
            'Negotiate YWJjZA==, Basic realm="a, b", Bearer realm="r\\"x",scope="s1 s2"',
            "NTLM",
        ]
    )
    assert [c.scheme for c in challenges] == ["negotiate", "basic", "bearer", "ntlm"]
    assert challenges[1].realm == "a, b"
    assert challenges[2].realm == 'r"x'
    assert challenges[2].scope == "s1 s2"


@pytest.mark.parametrize("header", ["", ",,,", "=", 'realm="x"', "Bearer realm=", "Bearer ,,realm"])
def test_odd_challenges_do_not_crash(header: str) -> None:
    auth.parse_challenges([header])


# -- tokens -------------------------------------------------------------------------------

BEARER = auth.Challenge(
    "bearer", (("realm", "https://auth.example/token"), ("service", "registry.example"))
)
USER = auth.Credentials(username="alice", password="s3cret", source="Secret ns/pull")


def test_anonymous_token_request() -> None:
    request = auth.build_token_request(BEARER, scopes=["repository:a/b:pull"], credentials=None)
    assert request.method == "GET"
    assert request.headers == ()
    parts = urllib.parse.urlsplit(request.url)
    assert parts.netloc == "auth.example"
    assert urllib.parse.parse_qs(parts.query) == {
        "service": ["registry.example"],
        "scope": ["repository:a/b:pull"],
    }


def test_basic_credentials_token_request() -> None:
    challenge = auth.Challenge("bearer", (("realm", "https://auth.example/token?x=1"),))
    request = auth.build_token_request(challenge, scopes=["s1", "s2"], credentials=USER)
    assert (
        dict(request.headers)["Authorization"]
        == "Basic " + base64.b64encode(b"alice:s3cret").decode()
    )
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.url).query)
    assert query == {"x": ["1"], "scope": ["s1", "s2"], "account": ["alice"]}


def test_identity_token_is_an_oauth2_refresh() -> None:
    credentials = auth.Credentials(username="00000000-0000", identity_token="refresh-me")
    request = auth.build_token_request(BEARER, scopes=["s1", "s2"], credentials=credentials)
    assert request.method == "POST"
    assert request.body is not None
    form = urllib.parse.parse_qs(request.body.decode())
    assert form == {
        "grant_type": ["refresh_token"],
        "client_id": [auth.CLIENT_ID],
        "service": ["registry.example"],
        "scope": ["s1 s2"],
        "refresh_token": ["refresh-me"],
    }


@pytest.mark.parametrize(
    ("realm", "allow_http", "message"),
    [
        (None, False, "without a realm"),
        ("ftp://x/token", False, "not an http(s) URL"),
        ("/token", False, "not an http(s) URL"),
        ("http://auth.example/token", False, "plain HTTP for an HTTPS registry"),
    ],
)
def test_unusable_realms(realm: str | None, allow_http: bool, message: str) -> None:
    params = (("realm", realm),) if realm else ()
    with pytest.raises(auth.ChallengeError, match=re.escape(message)):
        auth.build_token_request(
            auth.Challenge("bearer", params),
            scopes=[],
            credentials=USER,
            allow_plain_http=allow_http,
        )


def test_plain_http_realm_for_a_plain_http_registry() -> None:
    challenge = auth.Challenge("bearer", (("realm", "http://127.0.0.1:1/token"),))
    request = auth.build_token_request(
        challenge, scopes=[], credentials=None, allow_plain_http=True
    )
    assert request.url == "http://127.0.0.1:1/token"


def test_token_response_lifetime() -> None:
    token = auth.parse_token_response(
        b'{"token": "abc.def", "expires_in": 300, "issued_at": "2024-01-01T00:00:00Z"}', now=1000.0
    )
    default = auth.parse_token_response(b'{"access_token": "xyz"}', now=1000.0)
    assert (token.value, token.expires_at) == ("abc.def", 1000.0 + 270.0)
    assert (default.value, default.expires_at) == ("xyz", 1000.0 + 54.0)
    assert token.authorization == "Bearer abc.def"
    assert "abc" not in repr(token)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"token": ""}',
        b'{"token": "a\\r\\nX-Evil: 1"}',
        b'{"token": 5}',
    ],
)
def test_unusable_token_responses(body: bytes) -> None:
    with pytest.raises(auth.ChallengeError):
        auth.parse_token_response(body, now=0.0)


def test_nonsense_lifetimes_fall_back_to_the_default() -> None:
    for lifetime in ("300", -5, True, None):
        body = json.dumps({"token": "t", "expires_in": lifetime}).encode()
        assert auth.parse_token_response(body, now=0.0).expires_at == 54.0


# -- docker configs -----------------------------------------------------------------------


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_dockerconfigjson_and_dockercfg() -> None:
    modern = auth.parse_docker_config(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {"auth": b64("hub:pw:with:colons")},
                    "ghcr.io": {"username": "gh", "password": "token"},
                    "acr.example": {"identitytoken": "refresh"},
                    "store.example": {},
                },
                "credsStore": "desktop",
            }
        ),
        source="config.json",
    )
    legacy = auth.parse_docker_config(
        {"quay.io": {"auth": b64("q:pw"), "email": "q@example.com"}}, source="dockercfg"
    )

    hosts = [(e.host, e.credentials.username) for e in modern.entries]
    assert hosts == [("docker.io", "hub"), ("ghcr.io", "gh"), ("acr.example", None)]
    assert modern.entries[0].credentials.password == "pw:with:colons"
    assert modern.entries[2].credentials.identity_token == "refresh"
    assert modern.entries[1].credentials.source == "config.json (ghcr.io)"
    assert [(e.host, e.credentials.password) for e in legacy.entries] == [("quay.io", "pw")]


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ("{", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"auths": []}', "`auths` is not an object"),
        ('{"auths": {"x.io": {"auth": "!!!"}}}', "entry 'x.io': `auth` is not base64"),
        ('{"auths": {"x.io": {"auth": "' + b64("nocolon") + '"}}}', "no user:password pair"),
        ('{"auths": {"x.io": {"username": 5}}}', "`username` is not a string"),
        ('{"auths": {"x.io": "secret"}}', "entry is not an object"),
    ],
)
def test_bad_docker_configs_name_source_and_key(document: str, reason: str) -> None:
    with pytest.raises(errors.CredentialsError) as error:
        auth.parse_docker_config(document, source="Secret ns/pull")
    assert reason in str(error.value)
    assert str(error.value).startswith("credentials from Secret ns/pull: ")


def secret(
    kind: str, field: str, payload: dict[str, object], *, string: bool = False
) -> dict[str, object]:
    text = json.dumps(payload)
    data = {"stringData": {field: text}} if string else {"data": {field: b64(text)}}
    return {"metadata": {"namespace": "shop", "name": "pull"}, "type": kind, **data}


def test_pull_secrets_of_both_types() -> None:
    config = auth.parse_pull_secret(
        secret(
            auth.SECRET_TYPE_DOCKERCONFIGJSON,
            ".dockerconfigjson",
            {"auths": {"a.io": {"auth": b64("u:p")}}},
        )
    )
    legacy = auth.parse_pull_secret(
        secret(
            auth.SECRET_TYPE_DOCKERCFG, ".dockercfg", {"b.io": {"auth": b64("v:q")}}, string=True
        )
    )
    assert config.source == "Secret shop/pull"
    assert [(e.host, e.credentials.username) for e in config.entries] == [("a.io", "u")]
    assert [(e.host, e.credentials.username) for e in legacy.entries] == [("b.io", "v")]


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ({"type": "Opaque", "data": {}}, "is not kubernetes.io/dockerconfigjson"),
        ({"type": auth.SECRET_TYPE_DOCKERCONFIGJSON, "data": {}}, "has no '.dockerconfigjson' key"),
        (
            {"type": auth.SECRET_TYPE_DOCKERCONFIGJSON, "data": {".dockerconfigjson": "%%%"}},
            "is not base64",
        ),
    ],
)
def test_unusable_pull_secrets(document: dict[str, object], reason: str) -> None:
    with pytest.raises(errors.CredentialsError, match=reason):
        auth.parse_pull_secret(document)


# -- which credentials for which image ----------------------------------------------------


def config(source: str, auths: dict[str, str]) -> auth.DockerConfig:
    return auth.parse_docker_config(
        {"auths": {key: {"auth": b64(f"{user}:pw")} for key, user in auths.items()}}, source=source
    )


@pytest.mark.parametrize(
    "key", ["docker.io", "index.docker.io", "https://index.docker.io/v1/", "registry-1.docker.io"]
)
def test_docker_hub_keys_are_one_registry(key: str) -> None:
    chain = auth.build_credential_chain([config("s", {key: "hub"})], "docker.io", "library/nginx")
    assert [c.username for c in chain] == ["hub"]


def test_hosts_globs_ports_and_paths() -> None:
    source = config(
        "s",
        {
            "*.example.io": "glob",
            "registry.example.io/team-a": "team-a",
            "registry.example.io": "exact",
            "registry.example.io:5000": "port",
            "https://registry.example.io/team-a/app": "app",
        },
    )

    def users(registry: str, repository: str) -> list[str | None]:
        return [c.username for c in auth.build_credential_chain([source], registry, repository)]

    assert users("registry.example.io", "team-a/app") == ["app", "team-a", "exact", "glob"]
    assert users("registry.example.io", "team-ab/x") == ["exact", "glob"]
    assert users("other.example.io", "x") == ["glob"]
    assert users("a.b.example.io", "x") == []  # `*` is one label
    assert users("registry.example.io:5000", "x") == ["port"]
    assert users("REGISTRY.example.io:443", "x") == ["exact", "glob"]


def test_sources_keep_their_order_and_duplicates_go() -> None:
    pod = config("pod", {"ghcr.io": "pod"})
    service_account = config("sa", {"ghcr.io": "sa", "quay.io": "quay"})
    operator = config("operator", {"ghcr.io": "pod"})  # same secret values as the pod's

    chain = auth.build_credential_chain([pod, service_account, operator], "ghcr.io", "acme/web")

    assert [(c.username, c.source) for c in chain] == [
        ("pod", "pod (ghcr.io)"),
        ("sa", "sa (ghcr.io)"),
    ]
    assert auth.build_credential_chain([pod], "quay.io", "x") == ()


def test_credentials_never_show_secrets() -> None:
    text = repr(USER) + USER.describe() + USER.fingerprint
    assert "s3cret" not in text
    assert USER.describe() == "user 'alice' from Secret ns/pull"


def test_default_docker_config_paths() -> None:
    paths = configpaths.default_docker_config_paths(
        {"HOME": "/home/u", "DOCKER_CONFIG": "/etc/docker-cfg", "XDG_RUNTIME_DIR": "/run/user/1"}
    )
    assert paths == [
        pathlib.Path("/run/user/1/containers/auth.json"),
        pathlib.Path("/etc/docker-cfg/config.json"),
        pathlib.Path("/home/u/.dockercfg"),
    ]


def test_operator_credentials_scoped_to_named_registries() -> None:
    # Review finding 12: the operator's credentials are used for every pod's images
    # unless scoped; scoped, they reach only the registries named.
    config = auth.parse_docker_config(
        json.dumps(
            {
                "auths": {
                    "registry.acme.internal:5000": {"auth": base64.b64encode(b"u:p").decode()},
                    "ghcr.io": {"auth": base64.b64encode(b"g:p").decode()},
                    "mirror.acme.io": {"auth": base64.b64encode(b"m:p").decode()},
                }
            }
        ),
        source="operator",
    )
    scoped = auth.build_scoped_config(config, ["registry.acme.internal:5000", "*.acme.io"])
    assert sorted(entry.host for entry in scoped.entries) == [
        "mirror.acme.io",
        "registry.acme.internal:5000",
    ]
    assert auth.build_credential_chain([scoped], "ghcr.io", "acme/web") == ()
    assert auth.build_scoped_config(config, []) is config
    with pytest.raises(errors.ConfigurationError, match="credential scope 'a/b'"):
        auth.build_scoped_config(config, ["a/b"])


def test_operator_credentials_from_settings_are_scoped(tmp_path: pathlib.Path) -> None:
    from imageward import runtime, settings

    path = tmp_path / "config.json"
    pair = base64.b64encode(b"u:p").decode()
    path.write_text(
        json.dumps({"auths": {"ghcr.io": {"auth": pair}, "r.acme:5000": {"auth": pair}}})
    )
    config = settings.from_env(
        environ={
            "IMAGEWARD_DOCKER_CONFIG": str(path),
            "IMAGEWARD_DOCKER_CONFIG_REGISTRIES": "r.acme:5000",
        }
    )
    (loaded,) = runtime.load_operator_credentials(config)
    assert [entry.host for entry in loaded.entries] == ["r.acme:5000"]
    unscoped = settings.from_env(environ={"IMAGEWARD_DOCKER_CONFIG": str(path)})
    assert len(runtime.load_operator_credentials(unscoped)[0].entries) == 2
