"""Signature lookups of `imagesource.RegistryImageSource` against a real registry, with
real cosign signatures, counted at a proxy: what a warm admission of a signed image asks
the registry."""

from __future__ import annotations

import asyncio

import pytest

from imageward import imagesource, settings
from imageward.localcluster import cosign, faultproxy, images, registries
from imageward.registry import model as registry_model
from imageward.registry import reference
from imageward.signatures import keys
from imageward.signatures import verify as signatures_verify
from tests.cluster import helpers

pytestmark = pytest.mark.cluster


async def test_signature_sets_are_reused_briefly_and_blobs_for_good(
    registry_set: registries.Registries, cosign_tool: cosign.Cosign
) -> None:
    registry = registry_set.anonymous
    key = cosign_tool.generate_key_pair(f"src-{helpers.uid()}")
    repository = f"src/{helpers.uid()}"
    pushed = registry.client().push(repository, images.nonroot_image(repository), tag="1.0")
    cosign_tool.sign(pushed.pinned, key)
    cosign_tool.sign(pushed.pinned, key, legacy=True)
    digest = registry_model.Digest(pushed.digest)
    authority = signatures_verify.KeyAuthority(
        name="release", key=keys.parse_public_key(key.public_pem, authority="release")
    )

    with faultproxy.FaultProxy(registry.url) as proxy:
        config = settings.RegistrySettings(
            insecure_registries=(proxy.host,), signature_cache_ttl=0.5
        )
        ref = reference.parse_reference(f"{proxy.host}/{repository}:1.0")
        async with imagesource.RegistryImageSource(config) as source:
            first = await source.fetch_signatures(ref, digest, credentials=())
            blobs_first = proxy.count("/blobs/")
            assert blobs_first == 2  # the bundle and the simple-signing payload
            proxy.reset_counts()
            # Within signature_cache_ttl: a burst of pods of one image asks nothing.
            again = await asyncio.gather(
                *(source.fetch_signatures(ref, digest, credentials=()) for _ in range(20))
            )
            assert all(found is first for found in again)
            assert proxy.count("/") == 0
            await asyncio.sleep(0.6)
            second = await source.fetch_signatures(ref, digest, credentials=())
            assert proxy.count("/blobs/") == 0
            # Which signatures exist is asked again: a new one may have been pushed.
            assert proxy.count(r"/manifests/sha256-[0-9a-f]{64}\.sig$") == 1
            assert proxy.count(r"/manifests/sha256-[0-9a-f]{64}$") == 1

    assert second == first
    result = signatures_verify.verify(digest, second, [authority], threshold=1)
    assert result.passed
    assert len(result.attempts) == 1  # the first signature (the bundle) verified
    assert result.signatures_found == 2
