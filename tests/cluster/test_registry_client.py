"""The registry client against real registries (anonymous, htpasswd, token) and a proxy
that misbehaves in front of one: facts, auth, caching, deadlines and hostile answers."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from imageward import errors, metrics, records, settings
from imageward.localcluster import faultproxy, images, registries
from imageward.registry import auth, client, manifests, model, reference

pytestmark = pytest.mark.cluster

#: Slack allowed past a deadline: scheduling, not waiting (nothing may hang past it).
SLACK = 0.5


@dataclasses.dataclass(frozen=True, slots=True)
class Pushed:
    small: images.Pushed
    docker: images.Pushed
    multiarch: images.Pushed


def push_set(registry: registries.Registry, prefix: str) -> Pushed:
    pusher = registry.client()
    return Pushed(
        small=pusher.push(f"{prefix}/small", images.small_image("client-small"), tag="1.0"),
        docker=pusher.push(
            f"{prefix}/docker", images.small_image("client-docker", format="docker"), tag="1.0"
        ),
        multiarch=pusher.push(f"{prefix}/multi", images.multiarch_index("client-multi"), tag="1.0"),
    )


@pytest.fixture(scope="module")
def anonymous_set(anonymous_registry: registries.Registry) -> Pushed:
    return push_set(anonymous_registry, "set")


@pytest.fixture(scope="module")
def module_proxy(anonymous_registry: registries.Registry) -> Iterator[faultproxy.FaultProxy]:
    with faultproxy.FaultProxy(anonymous_registry.url) as proxy:
        yield proxy


@pytest.fixture
def proxy(module_proxy: faultproxy.FaultProxy) -> faultproxy.FaultProxy:
    module_proxy.clear()
    module_proxy.latency = 0.0
    return module_proxy


def make_settings(*hosts: str, **overrides: object) -> settings.RegistrySettings:
    return records.replace(
        settings.RegistrySettings(insecure_registries=hosts, retries=2), **overrides
    )


@pytest.fixture
async def anonymous_client(
    anonymous_registry: registries.Registry, proxy: faultproxy.FaultProxy
) -> AsyncIterator[client.RegistryClient]:
    async with client.RegistryClient(
        make_settings(anonymous_registry.host, proxy.host, lookup_deadline=5.0)
    ) as registry_client:
        yield registry_client


def ref(host: str, pushed: images.Pushed, *, tag: str | None = None) -> model.ImageReference:
    return reference.parse_reference(f"{host}/{pushed.repository}:{tag or pushed.tag}")


def docker_config(registry: registries.Registry, password: str | None = None) -> auth.DockerConfig:
    assert registry.credentials is not None
    credentials = registries.Credentials(
        registry.credentials.username, password or registry.credentials.password
    )
    source = "good secret" if password is None else "wrong secret"
    return auth.parse_docker_config(registry.docker_config(credentials), source=source)


# -- facts ------------------------------------------------------------------------------


async def test_facts_of_a_single_manifest(
    anonymous_client: client.RegistryClient,
    anonymous_registry: registries.Registry,
    anonymous_set: Pushed,
) -> None:
    pushed = anonymous_set.small
    facts = await anonymous_client.fetch_facts(ref(anonymous_registry.host, pushed))

    image = pushed.manifest
    assert facts.digest == image.digest
    assert (facts.is_index, facts.media_type) == (False, manifests.OCI_MANIFEST)
    (platform_image,) = facts.images
    assert platform_image.digest == image.digest
    assert platform_image.platform == model.Platform("linux", "amd64")
    assert [layer.digest for layer in platform_image.layers] == [x.digest for x in image.layers]
    assert platform_image.compressed_size == image.compressed_size
    assert platform_image.largest_layer is not None
    assert platform_image.largest_layer.size == image.largest_layer_size
    assert platform_image.config_digest == image.config.digest  # type: ignore[union-attr]
    assert platform_image.config.user == ""
    assert platform_image.config.created == images.DEFAULT_CREATED
    assert ("org.opencontainers.image.title", "client-small") in platform_image.config.labels


async def test_facts_of_a_docker_v2_manifest_and_by_digest(
    anonymous_client: client.RegistryClient,
    anonymous_registry: registries.Registry,
    anonymous_set: Pushed,
) -> None:
    pushed = anonymous_set.docker
    by_tag = await anonymous_client.fetch_facts(ref(anonymous_registry.host, pushed))
    pinned = reference.parse_reference(
        f"{anonymous_registry.host}/{pushed.repository}@{pushed.digest}"
    )

    by_digest = await anonymous_client.fetch_facts(pinned)

    assert by_tag.media_type == manifests.DOCKER_MANIFEST
    assert by_tag.images[0].layers[0].media_type == images.DOCKER_LAYER_GZIP
    assert by_digest.digest == by_tag.digest == pushed.digest
    assert by_digest.reference == pinned
    assert await anonymous_client.resolve(ref(anonymous_registry.host, pushed)) == pushed.digest


async def test_resolve_straight_from_the_registry(
    anonymous_registry: registries.Registry, anonymous_set: Pushed
) -> None:
    # The registry's HEAD answer carries the manifest's Content-Length but no body: a
    # fresh client (nothing cached) must not take that for an oversized answer.
    config = settings.RegistrySettings(insecure_registries=(anonymous_registry.host,))
    async with client.RegistryClient(config) as fresh:
        pushed = anonymous_set.multiarch
        assert await fresh.resolve(ref(anonymous_registry.host, pushed)) == pushed.digest


async def test_what_credentials_read_is_not_served_without_them(
    htpasswd_registry: registries.Registry,
) -> None:
    pushed = htpasswd_registry.client().push(
        f"private/{uuid.uuid4().hex[:8]}", images.nonroot_image(uuid.uuid4().hex), tag="1.0"
    )
    image = reference.parse_reference(
        f"{htpasswd_registry.host}/{pushed.name.split('/', 1)[1]}:1.0"
    )
    secret = auth.parse_docker_config(htpasswd_registry.docker_config(), source="pull-secret")
    config = settings.RegistrySettings(insecure_registries=(htpasswd_registry.host,))
    async with client.RegistryClient(config) as shared:
        facts = await shared.fetch_facts(image, credentials=[secret])
        assert facts.digest == pushed.digest
        # The same client, warm, asked without the secret: the registry decides, not the cache.
        with pytest.raises(errors.UnauthorizedError):
            await shared.fetch_facts(image)
        with pytest.raises(errors.UnauthorizedError):
            await shared.resolve(image)
        assert await shared.fetch_facts(image, credentials=[secret]) == facts


async def test_resolve_asks_with_head(
    anonymous_client: client.RegistryClient, proxy: faultproxy.FaultProxy, anonymous_set: Pushed
) -> None:
    pushed = anonymous_set.multiarch
    image = ref(proxy.host, pushed)

    digest = await anonymous_client.resolve(image)
    again = await anonymous_client.resolve(image)
    pinned = await anonymous_client.resolve(image.with_digest(model.Digest(pushed.digest)))

    assert digest == again == pinned == pushed.digest
    assert proxy.count("/manifests/", method="HEAD") == 1
    assert proxy.count("/manifests/", method="GET") == 0


async def test_multiarch_platform_selection_skips_attestations(
    anonymous_client: client.RegistryClient,
    anonymous_registry: registries.Registry,
    anonymous_set: Pushed,
) -> None:
    image = ref(anonymous_registry.host, anonymous_set.multiarch)
    index = anonymous_set.multiarch.manifest

    every = await anonymous_client.fetch_facts(image)
    arm = await anonymous_client.fetch_facts(image, platform=model.Platform("linux", "arm64"))
    arm_v8 = await anonymous_client.fetch_facts(
        image, platform=manifests.parse_platform("linux/arm64/v8")
    )
    s390x = await anonymous_client.fetch_facts(image, platform=model.Platform("linux", "s390x"))

    assert (every.is_index, every.digest, every.media_type) == (
        True,
        index.digest,
        images.OCI_INDEX,
    )
    assert [str(i.platform) for i in every.images] == ["linux/amd64", "linux/arm64/v8"]
    assert [i.config.user for i in every.images] == [images.NONROOT_USER] * 2
    attestations = {c.digest for c in index.children if c.platform == images.UNKNOWN_PLATFORM}
    assert not attestations & {i.digest for i in every.images}
    assert [str(i.platform) for i in arm.images] == ["linux/arm64/v8"]
    assert arm_v8.images == arm.images
    assert s390x.images == ()


async def test_manifest_blob_and_size_cap(
    anonymous_client: client.RegistryClient,
    anonymous_registry: registries.Registry,
    anonymous_set: Pushed,
) -> None:
    pushed = anonymous_set.small
    image = ref(anonymous_registry.host, pushed)
    layer = pushed.manifest.layers[1]

    fetched = await anonymous_client.fetch_manifest(image)
    blob = await anonymous_client.fetch_blob(
        image, model.Digest(layer.digest), max_bytes=layer.size
    )

    assert fetched.body == pushed.manifest.body
    assert blob == layer.data
    with pytest.raises(errors.TooLargeError) as error:
        await anonymous_client.fetch_blob(image, model.Digest(layer.digest), max_bytes=10)
    assert "over the limit of 10" in str(error.value)


async def test_not_found_says_what_is_missing(
    anonymous_client: client.RegistryClient,
    anonymous_registry: registries.Registry,
    anonymous_set: Pushed,
) -> None:
    missing_tag = reference.parse_reference(f"{anonymous_registry.host}/set/small:nope")
    missing_repo = reference.parse_reference(f"{anonymous_registry.host}/set/none:1.0")

    with pytest.raises(errors.NotFoundError) as tag_error:
        await anonymous_client.fetch_facts(missing_tag)
    with pytest.raises(errors.NotFoundError) as repo_error:
        await anonymous_client.fetch_facts(missing_repo)

    assert str(tag_error.value).startswith(f"{anonymous_registry.host}/set/small:nope: not found")
    assert "MANIFEST_UNKNOWN" in str(tag_error.value)
    assert str(repo_error.value).startswith(f"{anonymous_registry.host}/set/none:1.0: not found")


# -- referrers ----------------------------------------------------------------------------

BUNDLE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"


async def test_referrers_fall_back_to_the_tag_index(
    anonymous_client: client.RegistryClient, anonymous_registry: registries.Registry
) -> None:
    repository = f"referrers/{uuid.uuid4().hex[:8]}"
    pusher = anonymous_registry.client()
    subject = pusher.push(repository, images.small_image("subject"), tag="1.0").manifest
    bundle = images.build_artifact(
        [
            images.Blob.of(
                b'{"mediaType":"bundle"}', "application/vnd.dev.sigstore.bundle.v0.3+json"
            )
        ],
        artifact_type=BUNDLE_TYPE,
        subject=subject,
    )
    sbom = images.build_artifact(
        [images.Blob.of(b"{}", "application/spdx+json")],
        artifact_type="application/spdx+json",
        subject=subject,
    )
    for artifact in (bundle, sbom):
        pusher.push(repository, artifact)
    # What cosign v3 writes against a registry without the referrers API.
    tag_index = images.Manifest.of(
        {
            "schemaVersion": 2,
            "mediaType": images.OCI_INDEX,
            "manifests": [bundle.descriptor(), sbom.descriptor()],
        },
        images.OCI_INDEX,
    )
    pusher.push_manifest(
        repository, "sha256-" + subject.digest.split(":")[1], tag_index.body, images.OCI_INDEX
    )
    image = reference.parse_reference(f"{anonymous_registry.host}/{repository}:1.0")
    digest = model.Digest(subject.digest)

    every = await anonymous_client.fetch_referrers(image, digest)
    bundles = await anonymous_client.fetch_referrers(image, digest, artifact_type=BUNDLE_TYPE)
    other = await anonymous_client.fetch_referrers(
        image, model.Digest("sha256:" + "0" * 64), artifact_type=BUNDLE_TYPE
    )

    assert [d.digest for d in every] == [bundle.digest, sbom.digest]
    assert [(d.digest, d.artifact_type) for d in bundles] == [(bundle.digest, BUNDLE_TYPE)]
    assert other == ()
    fetched = await anonymous_client.fetch_manifest(image.with_digest(bundles[0].digest))
    assert isinstance(fetched.content, manifests.ImageManifest)
    assert fetched.content.subject is not None and fetched.content.subject.digest == subject.digest


async def test_native_referrers_api(
    anonymous_client: client.RegistryClient, proxy: faultproxy.FaultProxy, anonymous_set: Pushed
) -> None:
    # distribution lacks the API; the proxy answers the way zot, Harbor or ECR do.
    subject = anonymous_set.small
    descriptor = {
        "mediaType": images.OCI_MANIFEST,
        "digest": "sha256:" + "ab" * 32,
        "size": 123,
        "artifactType": BUNDLE_TYPE,
    }
    body = json.dumps(
        {"schemaVersion": 2, "mediaType": images.OCI_INDEX, "manifests": [descriptor]}
    ).encode()
    proxy.add(
        faultproxy.Fault(
            path="/referrers/",
            status=200,
            headers=(("Content-Type", images.OCI_INDEX), ("OCI-Filters-Applied", "artifactType")),
            body=body,
        )
    )
    image = ref(proxy.host, subject)

    found = await anonymous_client.fetch_referrers(
        image, model.Digest(subject.digest), artifact_type=BUNDLE_TYPE
    )

    assert [(d.digest, d.artifact_type) for d in found] == [(descriptor["digest"], BUNDLE_TYPE)]
    assert urllib.parse.parse_qs(proxy.seen[-1].query) == {"artifactType": [BUNDLE_TYPE]}
    assert proxy.count("/manifests/sha256-") == 0


# -- htpasswd -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def htpasswd_set(htpasswd_registry: registries.Registry) -> Pushed:
    return push_set(htpasswd_registry, "basic")


async def test_htpasswd_right_wrong_and_missing_credentials(
    htpasswd_registry: registries.Registry, htpasswd_set: Pushed
) -> None:
    image = ref(htpasswd_registry.host, htpasswd_set.small)
    async with client.RegistryClient(make_settings(htpasswd_registry.host)) as registry_client:
        with pytest.raises(errors.UnauthorizedError) as missing:
            await registry_client.fetch_facts(image)
        with pytest.raises(errors.UnauthorizedError) as wrong:
            await registry_client.fetch_facts(
                image, credentials=[docker_config(htpasswd_registry, "wrong")]
            )
        facts = await registry_client.fetch_facts(
            image, credentials=[docker_config(htpasswd_registry)]
        )

    assert "wants Basic credentials and no source has any" in str(missing.value)
    assert "from wrong secret" in str(wrong.value) and "refused (Basic)" in str(wrong.value)
    assert "wrong" not in str(wrong.value).replace("wrong secret", "")  # no password in it
    assert facts.digest == htpasswd_set.small.digest


async def test_the_next_source_is_tried_on_401(
    htpasswd_registry: registries.Registry, htpasswd_set: Pushed
) -> None:
    image = ref(htpasswd_registry.host, htpasswd_set.multiarch)
    sources = [docker_config(htpasswd_registry, "wrong"), docker_config(htpasswd_registry)]
    async with client.RegistryClient(make_settings(htpasswd_registry.host)) as registry_client:
        facts = await registry_client.fetch_facts(image, credentials=sources)

    assert len(facts.images) == 2


# -- token --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_set(token_registry: registries.Registry) -> dict[str, images.Pushed]:
    pusher = token_registry.client()
    return {
        "private": pusher.push("private/app", images.small_image("private"), tag="1.0"),
        "private-2": pusher.push("private/other", images.small_image("private-2"), tag="1.0"),
        "public": pusher.push("public/app", images.multiarch_index("public"), tag="1.0"),
    }


@pytest.fixture(scope="module")
def token_proxy(token_registry: registries.Registry) -> Iterator[faultproxy.FaultProxy]:
    with faultproxy.FaultProxy(token_registry.url) as proxy:
        yield proxy


async def test_token_anonymous_public_and_private(
    token_registry: registries.Registry, token_set: dict[str, images.Pushed]
) -> None:
    async with client.RegistryClient(make_settings(token_registry.host)) as registry_client:
        public = await registry_client.fetch_facts(ref(token_registry.host, token_set["public"]))
        with pytest.raises(errors.UnauthorizedError) as private:
            await registry_client.fetch_facts(ref(token_registry.host, token_set["private"]))

    assert public.digest == token_set["public"].digest
    assert "anonymous access: the token grants no pull access to private/app" in str(private.value)


async def test_token_with_right_and_wrong_credentials(
    token_registry: registries.Registry, token_set: dict[str, images.Pushed]
) -> None:
    image = ref(token_registry.host, token_set["private"])
    async with client.RegistryClient(make_settings(token_registry.host)) as registry_client:
        with pytest.raises(errors.UnauthorizedError) as wrong:
            await registry_client.fetch_facts(
                image, credentials=[docker_config(token_registry, "wrong")]
            )
        right = await registry_client.fetch_facts(
            image, credentials=[docker_config(token_registry)]
        )

    assert "token endpoint" in str(wrong.value) and "refused the credentials" in str(wrong.value)
    assert "bad credentials" in str(wrong.value)
    assert right.digest == token_set["private"].digest


async def test_tokens_are_cached_and_sent_up_front(
    token_registry: registries.Registry,
    token_set: dict[str, images.Pushed],
    token_proxy: faultproxy.FaultProxy,
) -> None:
    issuer = token_registry.token_issuer
    assert issuer is not None
    sources = [
        auth.parse_docker_config(
            {
                "auths": {
                    token_proxy.host: token_registry.docker_config()["auths"][token_registry.host]
                }
            },
            source="operator",
        )
    ]
    token_proxy.clear()
    async with client.RegistryClient(
        make_settings(token_proxy.host), credentials=sources
    ) as registry_client:
        before = len(issuer.token_requests())
        await registry_client.fetch_facts(ref(token_proxy.host, token_set["private"]))
        first = len(issuer.token_requests())
        manifests_first = token_proxy.count("/manifests/")
        registry_client.cache.facts.clear()
        registry_client.cache.images.clear()
        registry_client.cache.tags.clear()
        await registry_client.fetch_facts(ref(token_proxy.host, token_set["private"]))
        second = len(issuer.token_requests())
        await registry_client.fetch_facts(ref(token_proxy.host, token_set["private-2"]))
        third = len(issuer.token_requests())

    assert first - before == 1  # one token for the repository, then reused
    assert manifests_first == 2  # the 401 that taught the realm, then the real request
    assert second == first  # cached token
    assert third == second + 1  # a new repository needs a new scope...
    assert token_proxy.count("/private/other/manifests/") == 1  # ...fetched before asking


# -- redirects ----------------------------------------------------------------------------


async def test_redirects_do_not_carry_credentials_to_another_host(
    htpasswd_registry: registries.Registry,
    htpasswd_set: Pushed,
    anonymous_registry: registries.Registry,
) -> None:
    # Blob storage (S3, GCS) is another host: the registry redirects, the client follows
    # without the registry's credentials (the URL itself is the authorisation).
    pushed = htpasswd_set.small
    anonymous_registry.client().push(pushed.repository, pushed.manifest, tag="1.0")
    with (
        faultproxy.FaultProxy(anonymous_registry.url) as storage,
        faultproxy.FaultProxy(htpasswd_registry.url) as front,
    ):
        front.add(faultproxy.Fault(path="/blobs/", redirect=storage.url))
        async with client.RegistryClient(
            make_settings(front.host, storage.host)
        ) as registry_client:
            source = auth.parse_docker_config(
                {
                    "auths": {
                        front.host: htpasswd_registry.docker_config()["auths"][
                            htpasswd_registry.host
                        ]
                    }
                },
                source="secret",
            )
            facts = await registry_client.fetch_facts(ref(front.host, pushed), credentials=[source])
        blob_at_front = [s for s in front.seen if "/blobs/" in s.path]
        blob_at_storage = [s for s in storage.seen if "/blobs/" in s.path]

    assert facts.digest == pushed.digest
    assert blob_at_front and blob_at_front[-1].header("Authorization") is not None
    assert blob_at_storage and all(s.header("Authorization") is None for s in blob_at_storage)


# -- faults -------------------------------------------------------------------------------


async def timed_facts(
    registry_client: client.RegistryClient, image: model.ImageReference, **kwargs: object
) -> tuple[float, model.ImageFacts | BaseException]:
    started = time.monotonic()
    try:
        result: model.ImageFacts | BaseException = await registry_client.fetch_facts(
            image,
            **kwargs,  # type: ignore[arg-type]
        )
    except errors.RegistryError as e:
        result = e
    return time.monotonic() - started, result


async def test_latency_past_the_deadline_times_out_in_time(
    anonymous_client: client.RegistryClient, proxy: faultproxy.FaultProxy, anonymous_set: Pushed
) -> None:
    proxy.latency = 2.0

    elapsed, result = await timed_facts(
        anonymous_client, ref(proxy.host, anonymous_set.small), deadline=0.5
    )

    assert isinstance(result, errors.RegistryTimeoutError)
    assert elapsed < 0.5 + SLACK
    assert "within its 0.5s deadline" in str(result)
    assert "/v2/set/small/manifests/1.0" in str(result)  # which request it was waiting for


async def test_429_retry_after_is_honoured_inside_the_deadline(
    anonymous_client: client.RegistryClient, proxy: faultproxy.FaultProxy, anonymous_set: Pushed
) -> None:
    proxy.add(
        faultproxy.Fault(path="/manifests/", status=429, headers=(("Retry-After", "1"),), times=1)
    )

    elapsed, result = await timed_facts(anonymous_client, ref(proxy.host, anonymous_set.small))

    assert isinstance(result, model.ImageFacts)
    assert 1.0 <= elapsed < 1.0 + SLACK
    assert proxy.count("/manifests/") == 2


async def test_429_retry_after_beyond_the_deadline_fails_at_once(
    anonymous_client: client.RegistryClient, proxy: faultproxy.FaultProxy, anonymous_set: Pushed
) -> None:
    proxy.add(faultproxy.Fault(path="/manifests/", status=429, headers=(("Retry-After", "30"),)))

    elapsed, result = await timed_facts(
        anonymous_client, ref(proxy.host, anonymous_set.small), deadline=2.0
    )

    assert isinstance(result, errors.RateLimitedError)
    assert result.retry_after == 30
    assert elapsed < SLACK
    assert "Retry-After 30s does not fit" in str(result)


async def test_5xx_is_retried(
    anonymous_client: client.RegistryClient, proxy: faultproxy.FaultProxy, anonymous_set: Pushed
) -> None:
    proxy.add(faultproxy.Fault(path="/manifests/", status=503, times=2))

    _, result = await timed_facts(anonymous_client, ref(proxy.host, anonymous_set.small))

    assert isinstance(result, model.ImageFacts)
    assert proxy.count("/manifests/") == 3


async def test_5xx_every_time_is_a_server_error(
    anonymous_client: client.RegistryClient, proxy: faultproxy.FaultProxy, anonymous_set: Pushed
) -> None:
    proxy.add(
        faultproxy.Fault(
            path="/manifests/",
            status=502,
            body=b'{"errors":[{"code":"UNAVAILABLE","message":"backend down"}]}',
        )
    )

    _, result = await timed_facts(anonymous_client, ref(proxy.host, anonymous_set.small))

    assert isinstance(result, errors.ServerError)
    assert result.status == 502
    assert "UNAVAILABLE: backend down (after 3 attempts)" in str(result)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_oversized_manifest_is_refused(
    anonymous_client: client.RegistryClient,
    proxy: faultproxy.FaultProxy,
    anonymous_set: Pushed,
    chunked: bool,
) -> None:
    proxy.add(faultproxy.Fault(path="/manifests/", oversize=6 * 1024 * 1024, chunked=chunked))

    _, result = await timed_facts(anonymous_client, ref(proxy.host, anonymous_set.small))

    assert isinstance(result, errors.TooLargeError)
    limit = settings.RegistrySettings().max_manifest_bytes  # 1 MiB
    assert f"over the limit of {limit}" in str(result) or f"exceeds the limit of {limit}" in str(
        result
    )


async def test_altered_manifest_by_tag_is_a_digest_mismatch(
    anonymous_client: client.RegistryClient, proxy: faultproxy.FaultProxy, anonymous_set: Pushed
) -> None:
    proxy.add(faultproxy.Fault(path="/manifests/1.0", tamper=True))

    _, result = await timed_facts(anonymous_client, ref(proxy.host, anonymous_set.small))

    assert isinstance(result, errors.DigestMismatchError)
    assert f"registry says {anonymous_set.small.digest}" in str(result)


async def test_altered_child_manifest_and_config_are_digest_mismatches(
    anonymous_client: client.RegistryClient, proxy: faultproxy.FaultProxy, anonymous_set: Pushed
) -> None:
    # No Docker-Content-Digest to compare with: the digest asked for is the check.
    strip = (("Docker-Content-Digest", ""),)
    proxy.add(faultproxy.Fault(path="/manifests/sha256:", tamper=True, headers=strip, times=1))
    _, child = await timed_facts(anonymous_client, ref(proxy.host, anonymous_set.multiarch))
    proxy.clear()
    proxy.add(faultproxy.Fault(path="/blobs/", tamper=True))
    _, config = await timed_facts(anonymous_client, ref(proxy.host, anonymous_set.docker))

    assert isinstance(child, errors.DigestMismatchError)
    assert "not the requested sha256:" in str(child)
    # A tampered config is the content of that image: the facts come back (sizes and
    # signatures still decide), the config's problem is recorded for the user rule.
    assert isinstance(config, model.ImageFacts)
    (image,) = config.images
    assert image.config_problem is not None and "blob body hashes to" in image.config_problem
    assert "digest mismatch" in image.config_problem


async def test_wrong_content_type_is_refused(
    anonymous_client: client.RegistryClient, proxy: faultproxy.FaultProxy, anonymous_set: Pushed
) -> None:
    proxy.add(faultproxy.Fault(path="/manifests/", content_type="text/html; charset=utf-8"))
    _, html = await timed_facts(anonymous_client, ref(proxy.host, anonymous_set.small))
    proxy.clear()
    proxy.add(faultproxy.Fault(path="/manifests/", content_type=images.OCI_INDEX))
    _, confused = await timed_facts(anonymous_client, ref(proxy.host, anonymous_set.docker))

    assert isinstance(html, errors.BadResponseError)
    assert "Content-Type 'text/html' is not a manifest media type" in str(html)
    assert isinstance(confused, errors.BadResponseError)
    assert f"document declares {images.DOCKER_MANIFEST}" in str(confused)


async def test_a_trickling_body_times_out_with_what_arrived(
    anonymous_registry: registries.Registry, proxy: faultproxy.FaultProxy, anonymous_set: Pushed
) -> None:
    proxy.add(faultproxy.Fault(path="/manifests/", trickle=(16, 0.1)))
    config = make_settings(proxy.host, request_timeout=0.4, retries=0)
    async with client.RegistryClient(config) as registry_client:
        elapsed, result = await timed_facts(
            registry_client, ref(proxy.host, anonymous_set.small), deadline=1.0
        )

    assert isinstance(result, errors.RegistryTimeoutError)
    assert elapsed < 1.0 + SLACK
    assert "headers came, body" in str(result)


async def test_hang_and_dropped_connections(
    anonymous_client: client.RegistryClient, proxy: faultproxy.FaultProxy, anonymous_set: Pushed
) -> None:
    proxy.add(faultproxy.Fault(path="/manifests/", hang=True))
    hang_elapsed, hang = await timed_facts(
        anonymous_client, ref(proxy.host, anonymous_set.small), deadline=0.6
    )
    proxy.clear()
    proxy.add(faultproxy.Fault(path="/manifests/", drop=True))
    _, drop = await timed_facts(anonymous_client, ref(proxy.host, anonymous_set.small))

    assert isinstance(hang, errors.RegistryTimeoutError)
    assert hang_elapsed < 0.6 + SLACK
    assert isinstance(drop, errors.UnreachableError)
    assert "Server disconnected (after 3 attempts)" in str(drop)


async def test_garbage_answers_are_bad_responses(
    anonymous_client: client.RegistryClient, proxy: faultproxy.FaultProxy, anonymous_set: Pushed
) -> None:
    answers = [
        b"<html>hello</html>",
        b"[1, 2, 3]",
        b'{"schemaVersion": 2, "mediaType": "%s", "config": {"digest": 7}}'
        % images.OCI_MANIFEST.encode(),
        b'{"schemaVersion": 1, "name": "x"}',
    ]
    results = []
    for body in answers:
        proxy.clear()
        proxy.add(
            faultproxy.Fault(
                path="/manifests/",
                status=200,
                body=body,
                headers=(("Content-Type", "application/json"),),
            )
        )
        _, result = await timed_facts(anonymous_client, ref(proxy.host, anonymous_set.small))
        results.append(result)

    assert all(isinstance(r, errors.BadResponseError) for r in results), results
    assert "not JSON" in str(results[0])
    assert "not a JSON object" in str(results[1])
    assert "config has no mediaType" in str(results[2])
    assert "Docker schema 1" in str(results[3])


# -- caching and de-duplication ----------------------------------------------------------


async def test_100_concurrent_lookups_make_one_request_and_cached_ones_none(
    anonymous_client: client.RegistryClient, proxy: faultproxy.FaultProxy, anonymous_set: Pushed
) -> None:
    proxy.latency = 0.05  # long enough for all 100 to be waiting at once
    image = ref(proxy.host, anonymous_set.multiarch)

    results = await asyncio.gather(*(anonymous_client.fetch_facts(image) for _ in range(100)))
    counts = dict(proxy.counts())
    proxy.reset_counts()
    again = await asyncio.gather(*(anonymous_client.fetch_facts(image) for _ in range(100)))
    pinned = image.with_digest(results[0].digest)
    by_digest = await anonymous_client.fetch_facts(pinned)

    assert len({r.digest for r in results}) == 1 and again == results
    assert counts[("GET", f"/v2/{anonymous_set.multiarch.repository}/manifests/1.0")] == 1
    assert set(counts.values()) == {1}  # index, 2 platform manifests, 2 configs: once each
    assert len(counts) == 5
    assert proxy.count() == 0  # warm: nothing reached the registry
    assert by_digest.digest == results[0].digest and by_digest.reference == pinned


async def test_not_found_is_remembered_briefly(
    anonymous_client: client.RegistryClient, proxy: faultproxy.FaultProxy
) -> None:
    image = reference.parse_reference(f"{proxy.host}/set/small:missing")

    for _ in range(3):
        with pytest.raises(errors.NotFoundError):
            await anonymous_client.fetch_facts(image)

    assert proxy.count("/manifests/missing") == 1


async def test_mirror_first_then_the_registry(
    anonymous_registry: registries.Registry, proxy: faultproxy.FaultProxy, anonymous_set: Pushed
) -> None:
    # The "registry" here is a port nobody listens on; the mirror (proxy) has the image.
    upstream = "127.0.0.1:9"
    config = make_settings(
        upstream, proxy.host, mirrors=((upstream, proxy.host),), retries=0, lookup_deadline=3.0
    )
    image = reference.parse_reference(f"{upstream}/{anonymous_set.small.repository}:1.0")
    async with client.RegistryClient(config) as registry_client:
        facts = await registry_client.fetch_facts(image)
        proxy.add(faultproxy.Fault(path="/manifests/", status=503))
        registry_client.cache.clear()
        _, failed = await timed_facts(registry_client, image)

    assert facts.digest == anonymous_set.small.digest
    assert proxy.seen[0].query == f"ns={upstream}"
    assert isinstance(failed, errors.UnreachableError)  # the registry's own error wins
    assert upstream in str(failed)


async def test_requests_are_counted_in_metrics(
    anonymous_client: client.RegistryClient, proxy: faultproxy.FaultProxy, anonymous_set: Pushed
) -> None:
    labels = {"registry": proxy.host, "kind": "manifest", "code": "200"}
    before = metrics.REGISTRY.get_sample_value("imageward_registry_requests_total", labels) or 0

    await anonymous_client.fetch_facts(ref(proxy.host, anonymous_set.docker))

    after = metrics.REGISTRY.get_sample_value("imageward_registry_requests_total", labels)
    assert after == before + 1
    hits = metrics.REGISTRY.get_sample_value(
        "imageward_cache_lookups_total", {"cache": "facts", "result": "miss"}
    )
    assert hits is not None and hits >= 1


async def test_close_cancels_lookups_in_flight(
    anonymous_registry: registries.Registry, proxy: faultproxy.FaultProxy, anonymous_set: Pushed
) -> None:
    proxy.add(faultproxy.Fault(path="/manifests/", hang=True))
    registry_client = client.RegistryClient(make_settings(proxy.host))
    lookup = asyncio.ensure_future(
        registry_client.fetch_facts(ref(proxy.host, anonymous_set.small))
    )
    await asyncio.sleep(0.2)

    await registry_client.close()

    done, _ = await asyncio.wait([lookup], timeout=2)
    assert done, "the lookup outlived its client"
    assert lookup.cancelled() or isinstance(lookup.exception(), errors.RegistryError)
