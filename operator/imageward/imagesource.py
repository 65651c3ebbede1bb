"""Registry facts and cosign signatures for the checker, through the one registry client.

Signatures are looked up in both on-registry formats at once: the legacy
`sha256-<hex>.sig` tag and Sigstore bundles found through the referrers API (or its
`sha256-<hex>` tag fallback). A format that is simply absent is not an error.

Which signatures an image has can change at any time (signing again, a second
authority), so the tag and the referrers list are asked every time; the payload and
bundle blobs they name are content-addressed and digest-checked, so they are kept (by
registry, repository and digest, in a bounded LRU): a warm admission of a signed image
then costs one registry round trip instead of two.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

import cachetools

from imageward import errors, settings
from imageward.registry import auth, client, manifests, model
from imageward.signatures import verify as signatures_verify

BUNDLE_ARTIFACT_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
_MAX_SIGNATURE_BLOB = 1024 * 1024  # a bundle or a simplesigning payload is a few KiB
_MAX_SIGNATURE_MANIFESTS = 16  # a flood of referrers must not turn into a flood of fetches
_SIGNATURE_BLOB_CACHE_BYTES = 16 * 1024 * 1024  # thousands of bundles (a few KiB each)

_BlobKey = tuple[str, str, str]  # registry, repository, digest
_SetKey = tuple[str, str, str, tuple[auth.DockerConfig, ...]]


class RegistryImageSource:
    def __init__(
        self,
        config: settings.RegistrySettings,
        *,
        registry_client: client.RegistryClient | None = None,
    ) -> None:
        self.client = registry_client or client.RegistryClient(config)
        self._blobs: cachetools.LRUCache[_BlobKey, bytes] = cachetools.LRUCache(
            maxsize=_SIGNATURE_BLOB_CACHE_BYTES, getsizeof=len
        )
        # What signatures a digest has is re-read at most every `signature_cache_ttl`
        # seconds: a burst of pods of one image costs one lookup, a new signature is
        # seen within that time. Keyed by credentials too: what one pull secret may
        # read is not served to a pod without it.
        self._sets: cachetools.TTLCache[_SetKey, signatures_verify.SignatureSet] = (
            cachetools.TTLCache(maxsize=4096, ttl=config.signature_cache_ttl)
        )
        self._sets_in_flight: dict[_SetKey, asyncio.Future[signatures_verify.SignatureSet]] = {}

    async def __aenter__(self) -> RegistryImageSource:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.client.close()

    async def fetch_facts(
        self,
        reference: model.ImageReference,
        *,
        platform: model.Platform | None,
        credentials: Sequence[auth.DockerConfig],
    ) -> model.ImageFacts:
        return await self.client.fetch_facts(reference, platform=platform, credentials=credentials)

    async def resolve(
        self,
        reference: model.ImageReference,
        *,
        credentials: Sequence[auth.DockerConfig],
    ) -> model.Digest:
        return await self.client.resolve(reference, credentials=credentials)

    async def fetch_signatures(
        self,
        reference: model.ImageReference,
        digest: model.Digest,
        *,
        credentials: Sequence[auth.DockerConfig],
    ) -> signatures_verify.SignatureSet:
        key: _SetKey = (reference.registry, reference.repository, digest, tuple(credentials))
        cached = self._sets.get(key)
        if cached is not None:
            return cached
        pending = self._sets_in_flight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[signatures_verify.SignatureSet] = (
            asyncio.get_running_loop().create_future()
        )
        self._sets_in_flight[key] = future
        try:
            found = await self._lookup_signatures(reference, digest, credentials)
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: joiners get it; nobody else must
            raise
        else:
            self._sets[key] = found
            future.set_result(found)
            return found
        finally:
            del self._sets_in_flight[key]

    async def _lookup_signatures(
        self,
        reference: model.ImageReference,
        digest: model.Digest,
        credentials: Sequence[auth.DockerConfig],
    ) -> signatures_verify.SignatureSet:
        legacy, bundles = await asyncio.gather(
            self._fetch_legacy(reference, digest, credentials),
            self._fetch_bundles(reference, digest, credentials),
        )
        blobs = {**legacy[1], **bundles[1]}
        return signatures_verify.SignatureSet(
            legacy_manifests=legacy[0], bundle_manifests=bundles[0], blobs=blobs
        )

    async def _fetch_layers(
        self,
        reference: model.ImageReference,
        fetched: manifests.FetchedManifest,
        credentials: Sequence[auth.DockerConfig],
    ) -> dict[str, bytes]:
        if not isinstance(fetched.content, manifests.ImageManifest):
            return {}
        layers = fetched.content.layers[:_MAX_SIGNATURE_MANIFESTS]
        bodies = await asyncio.gather(
            *(self._fetch_blob(reference, layer.digest, credentials) for layer in layers)
        )
        return {layer.digest: body for layer, body in zip(layers, bodies, strict=True)}

    async def _fetch_blob(
        self,
        reference: model.ImageReference,
        digest: model.Digest,
        credentials: Sequence[auth.DockerConfig],
    ) -> bytes:
        """A signature blob, from the cache when this repository's blob was fetched before.

        The client checks the bytes against `digest` while fetching, so what is kept is
        exactly what the digest names.
        """
        key = (reference.registry, reference.repository, digest)
        cached = self._blobs.get(key)
        if cached is not None:
            return cached
        body = await self.client.fetch_blob(
            reference, digest, max_bytes=_MAX_SIGNATURE_BLOB, credentials=credentials
        )
        self._blobs[key] = body  # at most _MAX_SIGNATURE_BLOB, well under the cache size
        return body

    async def _fetch_legacy(
        self,
        reference: model.ImageReference,
        digest: model.Digest,
        credentials: Sequence[auth.DockerConfig],
    ) -> tuple[tuple[bytes, ...], dict[str, bytes]]:
        algorithm, _, hex_digest = digest.partition(":")
        tag_ref = dataclasses.replace(reference, tag=f"{algorithm}-{hex_digest}.sig", digest=None)
        try:
            fetched = await self.client.fetch_manifest(tag_ref, credentials=credentials)
        except errors.NotFoundError:
            return (), {}
        return (fetched.body,), await self._fetch_layers(tag_ref, fetched, credentials)

    async def _fetch_bundles(
        self,
        reference: model.ImageReference,
        digest: model.Digest,
        credentials: Sequence[auth.DockerConfig],
    ) -> tuple[tuple[bytes, ...], dict[str, bytes]]:
        # No server-side artifactType filter: registries disagree on what a referrer's
        # artifactType is (go-containerregistry's reports the config media type, the
        # empty type for cosign bundles), and a filter they get wrong hides signatures.
        # The bundle parser checks each manifest's own artifactType and layers.
        descriptors = await self.client.fetch_referrers(reference, digest, credentials=credentials)
        chosen = [d for d in descriptors if _may_be_bundle(d)][:_MAX_SIGNATURE_MANIFESTS]

        async def one(descriptor: manifests.Descriptor) -> tuple[bytes, dict[str, bytes]]:
            ref = dataclasses.replace(reference, tag=None, digest=descriptor.digest)
            fetched = await self.client.fetch_manifest(ref, credentials=credentials)
            return fetched.body, await self._fetch_layers(ref, fetched, credentials)

        results = await asyncio.gather(*(one(d) for d in chosen))
        blobs: dict[str, bytes] = {}
        for _, found in results:
            blobs.update(found)
        return tuple(body for body, _ in results), blobs


_EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"


def _may_be_bundle(descriptor: manifests.Descriptor) -> bool:
    if descriptor.artifact_type == BUNDLE_ARTIFACT_TYPE:
        return True
    if descriptor.annotation("dev.sigstore.bundle.content") is not None:
        return True
    # Registries that report the config media type for artifactType, or none at all.
    return descriptor.artifact_type in (None, "", _EMPTY_CONFIG)
