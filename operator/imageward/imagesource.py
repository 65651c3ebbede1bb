"""Registry facts and cosign signatures for the checker, through the one registry client.

Signatures are looked up in every on-registry format at once: the legacy
`sha256-<hex>.sig` tag, and Sigstore bundles and Notary Project (Notation) signatures
found through the referrers API (or its `sha256-<hex>` tag fallback), which share one
list, one manifest cap and one byte budget. A format that is simply absent is not an
error.
Attestations, when a policy asks for them, come in the same lookup: the legacy
`sha256-<hex>.att` tag beside the `.sig` one, and attestation bundles from the same
referrers list (no extra round trip), under a byte budget of their own (an SBOM is
larger than a signature, and must not crowd the signatures out).

Which signatures an image has can change at any time (signing again, a second
authority), so the tag and the referrers list are asked every time; the payload and
bundle blobs they name are content-addressed and digest-checked, so they are kept (by
registry, repository and digest, in a bounded LRU): a warm admission of a signed image
then costs one registry round trip instead of two.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import cachetools

from imageward import errors, records, settings
from imageward.registry import auth, client, manifests, model, platforms
from imageward.registry import reference as registry_reference
from imageward.signatures import bundle as signatures_bundle
from imageward.signatures import legacy as signatures_legacy
from imageward.signatures import verify as signatures_verify

BUNDLE_ARTIFACT_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
NOTATION_ARTIFACT_TYPE = "application/vnd.cncf.notary.signature"
#: The envelope layer of a Notation signature: JWS or COSE.
NOTATION_ENVELOPE_TYPES = frozenset({"application/jose+json", "application/cose"})
#: A bundle or a simple-signing payload is a few KiB (a keyless bundle with its
#: certificate chain and log entry under 16 KiB): anything larger is not read.
MAX_SIGNATURE_BLOB = 256 * 1024
#: What one digest's signatures may make us read and hold, all blobs together: a
#: flood of referrers or layers must not turn into a flood of fetches or of memory.
MAX_SIGNATURE_BYTES = 1024 * 1024
MAX_SIGNATURE_MANIFESTS = 16
#: One attestation envelope (a vulnerability report, an SBOM, a provenance): SBOMs of
#: large images run to megabytes; anything larger is refused, naming this cap.
MAX_ATTESTATION_BLOB = 4 * 1024 * 1024
#: All attestations of one digest together.
MAX_ATTESTATION_BYTES = 8 * 1024 * 1024
#: Referrer manifests read per digest when attestations are wanted too (re-attesting
#: daily adds one each day; the newest are read, the tag index lists them last).
MAX_REFERRER_MANIFESTS = 32
_SIGNATURE_BLOB_CACHE_BYTES = 16 * 1024 * 1024  # thousands of bundles (a few KiB each)
_ATTESTATION_BLOB_CACHE_BYTES = 32 * 1024 * 1024
_SIGNATURE_SET_CACHE_BYTES = 32 * 1024 * 1024
_ATTESTATION_SET_CACHE_BYTES = 64 * 1024 * 1024

_BlobKey = tuple[str, str, str]  # registry, repository, digest
_SetKey = tuple[str, str, str, tuple[auth.DockerConfig, ...], bool]  # … with attestations


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
        self._attestation_blobs: cachetools.LRUCache[_BlobKey, bytes] = cachetools.LRUCache(
            maxsize=_ATTESTATION_BLOB_CACHE_BYTES, getsizeof=len
        )
        # What signatures a digest has is re-read at most every `signature_cache_ttl`
        # seconds: a burst of pods of one image costs one lookup, a new signature is
        # seen within that time. Keyed by credentials too: what one pull secret may
        # read is not served to a pod without it.
        self._sets: cachetools.TTLCache[_SetKey, signatures_verify.SignatureSet] = (
            cachetools.TTLCache(
                maxsize=_SIGNATURE_SET_CACHE_BYTES,
                ttl=config.signature_cache_ttl,
                getsizeof=lambda found: max(1, found.size),
            )
        )
        self._attestation_sets: cachetools.TTLCache[_SetKey, signatures_verify.SignatureSet] = (
            cachetools.TTLCache(
                maxsize=_ATTESTATION_SET_CACHE_BYTES,
                ttl=config.signature_cache_ttl,
                getsizeof=lambda found: max(1, found.size),
            )
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
        platform: platforms.PlatformChoice | model.Platform | None,
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
        attestations: bool = False,
    ) -> signatures_verify.SignatureSet:
        """The signatures of `digest` and, with `attestations`, its attestations too."""
        base = (reference.registry, reference.repository, digest, tuple(credentials))
        key: _SetKey = (*base, attestations)
        wider: _SetKey = (*base, True)
        sets = self._attestation_sets if attestations else self._sets
        cached = sets.get(key) or (None if attestations else self._attestation_sets.get(wider))
        if cached is not None:
            return cached
        pending = self._sets_in_flight.get(key) or (
            None if attestations else self._sets_in_flight.get(wider)
        )
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[signatures_verify.SignatureSet] = (
            asyncio.get_running_loop().create_future()
        )
        self._sets_in_flight[key] = future
        try:
            found = await self._lookup_signatures(reference, digest, credentials, attestations)
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: joiners get it; nobody else must
            raise
        else:
            sets[key] = found
            future.set_result(found)
            return found
        finally:
            del self._sets_in_flight[key]

    async def _lookup_signatures(
        self,
        reference: model.ImageReference,
        digest: model.Digest,
        credentials: Sequence[auth.DockerConfig],
        attestations: bool = False,
    ) -> signatures_verify.SignatureSet:
        """Both formats' manifests and blobs of `digest`, within the byte budgets.

        Raises only outages (errors.RegistryError with `outage`): those make the
        signatures undecidable. Content the registry did serve but that cannot be used
        (a referrers list that is no index, a blob missing, oversized or tampered) is
        recorded in `problems` (or as an unreadable manifest), so that signature alone
        is refused and the others still count.
        """
        budget = _Budget(MAX_SIGNATURE_BYTES)
        attestation_budget = _Budget(MAX_ATTESTATION_BYTES) if attestations else None
        problems: dict[str, str] = {}
        legacy, bundles, attested = await asyncio.gather(
            self._fetch_legacy(reference, digest, credentials, budget, problems),
            self._fetch_bundles(
                reference, digest, credentials, budget, problems, attestation_budget
            ),
            self._fetch_legacy(
                reference, digest, credentials, attestation_budget, problems, attestations=True
            )
            if attestation_budget is not None
            else _nothing(),
        )
        blobs = {**legacy[1], **bundles[1], **attested[1]}
        return signatures_verify.SignatureSet(
            legacy_manifests=legacy[0],
            bundle_manifests=bundles[0],
            blobs=blobs,
            problems=problems,
            attestation_manifests=attested[0],
        )

    async def _fetch_layers(
        self,
        reference: model.ImageReference,
        fetched: manifests.FetchedManifest,
        credentials: Sequence[auth.DockerConfig],
        budget: _Budget,
        problems: dict[str, str],
        *,
        wanted: Callable[[manifests.Descriptor], bool],
        attestations: bool = False,
    ) -> dict[str, bytes]:
        if not isinstance(fetched.content, manifests.ImageManifest):
            return {}
        cap, total, what = (
            (MAX_ATTESTATION_BLOB, MAX_ATTESTATION_BYTES, "attestation")
            if attestations
            else (MAX_SIGNATURE_BLOB, MAX_SIGNATURE_BYTES, "signature")
        )
        layers: list[manifests.Descriptor] = []
        for layer in fetched.content.layers:
            if not wanted(layer):
                continue  # not a signature layer: never fetched
            if layer.size > cap:
                problems[layer.digest] = (
                    f"is {layer.size} bytes (per its descriptor), over the limit of "
                    f"{cap} for one {what}"
                )
            elif not budget.take(layer.size):
                problems[layer.digest] = (
                    f"was not read: the {what}s of this image exceed {total} bytes in all"
                )
            else:
                layers.append(layer)
        bodies = await asyncio.gather(
            *(
                self._fetch_blob(reference, layer, credentials, problems, attestations=attestations)
                for layer in layers
            )
        )
        return {
            layer.digest: body
            for layer, body in zip(layers, bodies, strict=True)
            if body is not None
        }

    async def _fetch_blob(
        self,
        reference: model.ImageReference,
        layer: manifests.Descriptor,
        credentials: Sequence[auth.DockerConfig],
        problems: dict[str, str],
        *,
        attestations: bool = False,
    ) -> bytes | None:
        """A signature blob, from the cache when this repository's blob was fetched before.

        The client checks the bytes against the digest while fetching, so what is kept
        is exactly what the digest names. None (and a problem recorded) when what the
        registry served cannot be used; outages raise.
        """
        key = (reference.registry, reference.repository, layer.digest)
        cache = self._attestation_blobs if attestations else self._blobs
        cached = cache.get(key)
        if cached is not None:
            return cached
        try:
            body = await self.client.fetch_blob(
                reference,
                layer.digest,
                max_bytes=min(
                    layer.size, MAX_ATTESTATION_BLOB if attestations else MAX_SIGNATURE_BLOB
                ),
                credentials=credentials,
            )
        except errors.RegistryError as e:
            if e.outage:
                raise
            problems[layer.digest] = f"cannot be fetched: {e}"
            return None
        cache[key] = body  # at most one blob cap, well under the cache size
        return body

    async def _fetch_manifest(
        self,
        ref: model.ImageReference,
        credentials: Sequence[auth.DockerConfig],
        problems: dict[str, str],
    ) -> manifests.FetchedManifest | None:
        """A signature manifest, or None with the problem recorded (outages raise)."""
        try:
            return await self.client.fetch_manifest(ref, credentials=credentials)
        except errors.NotFoundError:
            raise
        except errors.RegistryError as e:
            if e.outage:
                raise
            problems[ref.digest or ref.tag or str(ref)] = f"manifest {ref.reference}: {e}"
            return None

    async def _fetch_legacy(
        self,
        reference: model.ImageReference,
        digest: model.Digest,
        credentials: Sequence[auth.DockerConfig],
        budget: _Budget,
        problems: dict[str, str],
        *,
        attestations: bool = False,
    ) -> tuple[tuple[bytes, ...], dict[str, bytes]]:
        tag = (
            registry_reference.build_referrers_tag(digest) + ".att"
            if attestations
            else registry_reference.build_signature_tag(digest)
        )
        media_type = DSSE_MEDIA_TYPE if attestations else signatures_legacy.MEDIA_TYPE
        tag_ref = reference.with_tag(tag)
        try:
            fetched = await self._fetch_manifest(tag_ref, credentials, problems)
        except errors.NotFoundError:
            return (), {}
        if fetched is None:
            return (), {}
        blobs = await self._fetch_layers(
            tag_ref,
            fetched,
            credentials,
            budget,
            problems,
            wanted=lambda layer: layer.media_type == media_type,
            attestations=attestations,
        )
        return (fetched.body,), blobs

    async def _fetch_bundles(
        self,
        reference: model.ImageReference,
        digest: model.Digest,
        credentials: Sequence[auth.DockerConfig],
        budget: _Budget,
        problems: dict[str, str],
        attestation_budget: _Budget | None = None,
    ) -> tuple[tuple[bytes, ...], dict[str, bytes]]:
        # No server-side artifactType filter: registries disagree on what a referrer's
        # artifactType is (go-containerregistry's reports the config media type, the
        # empty type for cosign bundles), and a filter they get wrong hides signatures.
        # The bundle parser checks each manifest's own artifactType and layers.
        try:
            descriptors = await self.client.fetch_referrers(
                reference, digest, credentials=credentials
            )
        except errors.RegistryError as e:
            if e.outage:
                raise
            problems[f"referrers of {digest}"] = f"referrers list cannot be read: {e}"
            return (), {}
        limit = MAX_SIGNATURE_MANIFESTS if attestation_budget is None else MAX_REFERRER_MANIFESTS
        chosen = [d for d in descriptors if _may_be_bundle(d)][-limit:]

        async def one(descriptor: manifests.Descriptor) -> tuple[bytes, dict[str, bytes]] | None:
            ref = reference.with_digest(descriptor.digest)
            ref = records.replace(ref, tag=None)
            try:
                fetched = await self._fetch_manifest(ref, credentials, problems)
            except errors.NotFoundError as e:
                problems[descriptor.digest] = f"referrer manifest is listed but missing: {e}"
                return None
            if fetched is None:
                return None
            # What the manifest announces decides which budget its blob comes from (and
            # whether it is read at all): an attestation must not use up the signatures'.
            announced = _announced_predicate(fetched)
            attestation = (
                announced is not None and announced != signatures_bundle.SIGN_PREDICATE_TYPE
            )
            if attestation and attestation_budget is None:
                return fetched.body, {}
            blobs = await self._fetch_layers(
                ref,
                fetched,
                credentials,
                attestation_budget if attestation and attestation_budget else budget,
                problems,
                wanted=lambda layer: (
                    layer.media_type.startswith(signatures_bundle.MEDIA_TYPE_PREFIX)
                    or layer.media_type in NOTATION_ENVELOPE_TYPES
                ),
                attestations=attestation,
            )
            return fetched.body, blobs

        results = [r for r in await asyncio.gather(*(one(d) for d in chosen)) if r is not None]
        blobs: dict[str, bytes] = {}
        for _, found in results:
            blobs.update(found)
        return tuple(body for body, _ in results), blobs


class _Budget:
    """Bytes one digest's signatures may still take (declared sizes, before fetching)."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def take(self, size: int) -> bool:
        if size > self.left:
            self.left = 0  # once over, nothing more: the order of fetches is not stable
            return False
        self.left -= size
        return True


_EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
#: The media type of a legacy attestation layer (`sha256-<hex>.att`): a DSSE envelope.
DSSE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"


async def _nothing() -> tuple[tuple[bytes, ...], dict[str, bytes]]:
    return (), {}


def _announced_predicate(fetched: manifests.FetchedManifest) -> str | None:
    """The predicate type a referrer manifest announces (an unsigned hint)."""
    content = fetched.content
    if not isinstance(content, manifests.ImageManifest):
        return None
    return dict(content.annotations).get(signatures_bundle.PREDICATE_ANNOTATION)


def _may_be_bundle(descriptor: manifests.Descriptor) -> bool:
    """Whether a referrer may be a signature (a Sigstore bundle or a Notation signature)."""
    if descriptor.artifact_type in (BUNDLE_ARTIFACT_TYPE, NOTATION_ARTIFACT_TYPE):
        return True
    if descriptor.annotation("dev.sigstore.bundle.content") is not None:
        return True
    # Registries that report the config media type for artifactType, or none at all.
    return descriptor.artifact_type in (None, "", _EMPTY_CONFIG)
