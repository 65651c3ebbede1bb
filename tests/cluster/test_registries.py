"""The three local registry variants are real: images pushed through the HTTP API read back
byte for byte, and each variant refuses what a real registry of its kind refuses."""

from __future__ import annotations

import http.client
import json
import pathlib
import shutil
import subprocess
import uuid

import pytest

from imageward.localcluster import images, registries, tokenissuer

pytestmark = pytest.mark.cluster


# The three variants' module fixtures are in tests/cluster/conftest.py.
@pytest.fixture(params=["anonymous", "htpasswd", "token"])
def any_registry(request: pytest.FixtureRequest) -> registries.Registry:
    registry: registries.Registry = request.getfixturevalue(f"{request.param}_registry")
    return registry


@pytest.fixture
def repo() -> str:
    """A repository name no other test uses (writable by the token variant's main user)."""
    return f"test/{uuid.uuid4().hex[:8]}"


def raw_get(
    host: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request without any auth handling, to see what the registry itself answers."""
    connection = http.client.HTTPConnection(host, timeout=10)
    try:
        connection.request("GET", path, headers=headers or {})
        with connection.getresponse() as response:
            return response.status, response.headers, response.read()
    finally:
        connection.close()


def assert_reads_back(client: images.RegistryClient, repo: str, image: images.Manifest) -> None:
    fetched = client.get_manifest(repo, "1.0")
    assert fetched.digest == image.digest
    assert fetched.body == image.body
    assert fetched.media_type == image.media_type
    document = fetched.document
    assert client.get_blob(repo, document["config"]["digest"]) == image.config.data  # type: ignore[union-attr]
    blobs = [client.get_blob(repo, layer["digest"]) for layer in document["layers"]]
    assert blobs == [layer.data for layer in image.layers]


# -- every variant ------------------------------------------------------------------------


def test_push_and_read_back(any_registry: registries.Registry, repo: str) -> None:
    client = any_registry.client()
    image = images.small_image("round-trip", user=images.NONROOT_USER)

    pushed = client.push(repo, image, tag="1.0")

    assert pushed.ref == f"{any_registry.host}/{repo}:1.0"
    assert pushed.pinned == f"{any_registry.host}/{repo}@{image.digest}"
    assert_reads_back(client, repo, image)
    assert client.list_tags(repo) == ["1.0"]
    config = json.loads(client.get_blob(repo, image.config.digest))  # type: ignore[union-attr]
    assert config["config"]["User"] == "65532:65532"


def test_pushing_again_uploads_no_blob(any_registry: registries.Registry, repo: str) -> None:
    client = any_registry.client()
    image = images.small_image("again")
    client.push(repo, image, tag="1.0")
    log_size = any_registry.log_path.stat().st_size

    client.push(repo, image, tag="1.0")

    new_log = any_registry.log_path.read_bytes()[log_size:]
    assert b"POST /v2/" not in new_log  # HEAD found every blob


def test_index_docker_and_artifact_manifests(any_registry: registries.Registry, repo: str) -> None:
    client = any_registry.client()
    index = images.multiarch_index()
    docker = images.small_image("docker", format="docker")

    client.push(repo, index, tag="multi")
    client.push(repo, docker, tag="docker")
    signature = images.build_artifact(
        [images.Blob.of(b'{"critical":{}}', "application/vnd.dev.cosign.simplesigning.v1+json")],
        config=images.Blob.of(b"{}", images.OCI_CONFIG),
    )
    sig_tag = index.digest.replace(":", "-") + ".sig"
    client.push(repo, signature, tag=sig_tag)

    fetched = client.get_manifest(repo, "multi")
    assert (fetched.digest, fetched.media_type) == (index.digest, images.OCI_INDEX)
    platforms = [m["platform"] for m in fetched.document["manifests"]]
    assert platforms == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "unknown", "os": "unknown"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
        {"architecture": "unknown", "os": "unknown"},
    ]
    for child in index.children:
        assert client.get_manifest(repo, child.digest).body == child.body
    assert client.get_manifest(repo, "docker").media_type == images.DOCKER_MANIFEST
    assert client.get_manifest(repo, sig_tag).digest == signature.digest
    assert sorted(client.list_tags(repo)) == sorted(["multi", "docker", sig_tag])


def test_tag_and_delete(any_registry: registries.Registry, repo: str) -> None:
    client = any_registry.client()
    image = images.small_image("tag-delete")
    client.push(repo, image, tag="1.0")

    assert client.tag(repo, "1.0", "stable") == image.digest
    assert client.manifest_digest(repo, "stable") == image.digest

    client.delete_manifest(repo, image.digest)
    assert client.manifest_digest(repo, image.digest) is None
    assert client.manifest_digest(repo, "stable") is None


def test_an_independent_client_reads_what_we_push(
    any_registry: registries.Registry, repo: str, tmp_path: pathlib.Path
) -> None:
    # skopeo (containers/image) does its own challenge handling: if it agrees, the
    # registries and the token issuer behave like the real thing, not just like our client.
    skopeo = shutil.which("skopeo")
    assert skopeo, "skopeo is missing: run hack/install-packages.sh"
    index = images.multiarch_index()
    any_registry.client().push(repo, index, tag="1.0")
    # Credentials the way the operator and kubelet get them: a dockerconfigjson file.
    auth_file = tmp_path / "auth.json"
    auth_file.write_text(json.dumps(any_registry.docker_config()))

    result = subprocess.run(
        [
            skopeo,
            "inspect",
            "--raw",
            "--tls-verify=false",
            f"--authfile={auth_file}",
            f"docker://{any_registry.host}/{repo}:1.0",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == index.body


# -- the standard test set ----------------------------------------------------------------


def test_standard_test_images(anonymous_registry: registries.Registry) -> None:
    client = anonymous_registry.client()
    executable = b"\x7fELF" + bytes(range(256)) * 4  # the content does not matter here

    pushed = images.push_test_images(client, prefix="std", executable=executable)

    assert set(pushed) == {
        "small",
        "root",
        "nonroot",
        "docker-v2",
        "large",
        "many-layers",
        "multiarch",
        "shared-0",
        "shared-1",
        "shared-2",
        "scratch",
    }
    large = client.get_manifest("std/large", "1.0").document
    assert sum(layer["size"] for layer in large["layers"]) > 30 * images.MiB
    assert len(client.get_manifest("std/many-layers", "1.0").document["layers"]) == 60
    shared = [client.get_manifest(f"std/shared-{i}", "1.0").document for i in range(3)]
    assert shared[0]["layers"][:3] == shared[1]["layers"][:3] == shared[2]["layers"][:3]
    assert len({json.dumps(doc["layers"][3]) for doc in shared}) == 3
    scratch = pushed["scratch"].manifest
    assert client.get_blob("std/scratch", scratch.layers[0].digest) == scratch.layers[0].data


# -- htpasswd -----------------------------------------------------------------------------


def test_htpasswd_challenges_with_basic(htpasswd_registry: registries.Registry) -> None:
    status, headers, _ = raw_get(htpasswd_registry.host, "/v2/")
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Basic ")


def test_htpasswd_refuses_wrong_and_missing_credentials(
    htpasswd_registry: registries.Registry, repo: str
) -> None:
    htpasswd_registry.client().push(repo, images.small_image(), tag="1.0")
    assert htpasswd_registry.credentials is not None
    wrong = registries.Credentials(htpasswd_registry.credentials.username, "wrong")

    for client in (htpasswd_registry.client(wrong), htpasswd_registry.client(anonymous=True)):
        with pytest.raises(images.RegistryHTTPError) as error:
            client.get_manifest(repo, "1.0")
        assert error.value.status == 401
        with pytest.raises(images.RegistryHTTPError) as error:
            client.push(repo, images.small_image("intruder"), tag="1.0")
        assert error.value.status == 401


# -- token --------------------------------------------------------------------------------


def token_client(registry: registries.Registry, username: str) -> images.RegistryClient:
    return registry.client(registries.Credentials(username, registry.accounts[username].password))


def test_token_challenge_names_realm_and_service(token_registry: registries.Registry) -> None:
    assert token_registry.token_issuer is not None
    status, headers, _ = raw_get(token_registry.host, "/v2/")

    assert status == 401
    scheme, params = images.parse_challenge(headers["WWW-Authenticate"])
    assert scheme == "bearer"
    assert params["realm"] == token_registry.token_issuer.realm
    assert params["service"] == tokenissuer.DEFAULT_SERVICE


def test_token_is_signed_and_scoped(token_registry: registries.Registry, repo: str) -> None:
    issuer = token_registry.token_issuer
    assert issuer is not None and token_registry.credentials is not None
    client = token_registry.client()
    token, expires_in = client.fetch_token(
        issuer.realm, issuer.service, f"repository:{repo}:pull,push"
    )

    claims = tokenissuer.verify_jwt(token, issuer.key.public_key())
    assert expires_in == issuer.ttl
    assert claims["iss"] == issuer.issuer
    assert claims["aud"] == issuer.service
    assert claims["sub"] == token_registry.credentials.username
    assert claims["access"] == [{"type": "repository", "name": repo, "actions": ["pull", "push"]}]
    assert claims["nbf"] <= claims["iat"] < claims["exp"]


def test_token_refuses_wrong_credentials(token_registry: registries.Registry, repo: str) -> None:
    assert token_registry.credentials is not None
    wrong = registries.Credentials(token_registry.credentials.username, "wrong")

    with pytest.raises(images.RegistryHTTPError) as error:
        token_registry.client(wrong).get_manifest(repo, "1.0")

    assert error.value.status == 401
    assert error.value.url.startswith(token_registry.token_issuer.realm)  # type: ignore[union-attr]


def test_token_anonymous_pull_only_from_public(token_registry: registries.Registry) -> None:
    owner = token_registry.client()
    private = f"private/{uuid.uuid4().hex[:8]}"
    public = f"public/{uuid.uuid4().hex[:8]}"
    image = images.small_image("visibility")
    owner.push(private, image, tag="1.0")
    owner.push(public, image, tag="1.0")
    anonymous = token_registry.client(anonymous=True)

    assert anonymous.get_manifest(public, "1.0").digest == image.digest
    with pytest.raises(images.RegistryHTTPError) as error:
        anonymous.get_manifest(private, "1.0")
    assert error.value.status == 401
    with pytest.raises(images.RegistryHTTPError) as error:
        anonymous.push(public, images.small_image("anonymous-push"), tag="2.0")
    assert error.value.status == 401


def test_token_grants_follow_accounts(token_registry: registries.Registry) -> None:
    own = f"team-a/{uuid.uuid4().hex[:8]}"
    other = f"team-b/{uuid.uuid4().hex[:8]}"
    image = images.small_image("grants")
    team_a = token_client(token_registry, "team-a")
    reader = token_client(token_registry, "reader")

    team_a.push(own, image, tag="1.0")
    with pytest.raises(images.RegistryHTTPError) as error:
        team_a.push(other, image, tag="1.0")
    assert error.value.status == 401

    assert reader.get_manifest(own, "1.0").digest == image.digest
    with pytest.raises(images.RegistryHTTPError) as error:
        reader.push(own, images.small_image("reader-push"), tag="2.0")
    assert error.value.status == 401


def test_token_is_reused_until_it_expires(token_registry: registries.Registry, repo: str) -> None:
    issuer = token_registry.token_issuer
    assert issuer is not None
    client = token_registry.client()
    client.push(repo, images.small_image("reuse"), tag="1.0")
    before = len(issuer.token_requests())

    for _ in range(3):
        client.get_manifest(repo, "1.0")

    assert len(issuer.token_requests()) == before  # the pull token was cached after push
