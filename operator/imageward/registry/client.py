"""The registry client: the pure modules joined to the transport, with caches and deadlines.

Each public call (`fetch_facts`, `resolve`, `fetch_manifest`, `fetch_blob`,
`fetch_referrers`) runs under one deadline (`asyncio.timeout_at`); inside it a request
goes to the registry's mirrors, then the registry (`routes`), answers auth challenges
with the call's credentials (`auth`), follows redirects without credentials to other
hosts, retries 5xx and broken connections, and waits out a 429 `Retry-After` when it
fits before the deadline. What comes back is checked (`manifests`: digests, sizes,
media types) before anything is cached (`cache`).

Credentials: each call passes its sources (docker configs from the pod's pull secrets,
then its ServiceAccount's); the client's own (the operator's) come after them. The
first source with credentials for the registry is tried first; on 401 the next one.
With none, requests go anonymously.

Errors are `errors.RegistryError` subclasses naming registry, repository, reference and
what happened; nothing else escapes a public call (an unexpected exception becomes a
BadResponseError), because admission must answer whatever a registry sends.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterable, Sequence
from typing import Any, ClassVar, TypeVar

from imageward import errors, records, settings
from imageward.registry import (
    auth,
    cache,
    manifests,
    model,
    platforms,
    reference,
    routes,
    transport,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

KIND_MANIFEST = "manifest"
KIND_BLOB = "blob"
KIND_REFERRERS = "referrers"
KIND_TOKEN = "token"

MAX_REDIRECTS = 5
MAX_TOKEN_BYTES = 64 * 1024
MAX_REFERRER_PAGES = 10
#: Platform images one reference may select (nodes of every platform, Windows builds):
#: a hostile index must not turn one admission into hundreds of fetches.
MAX_PLATFORM_IMAGES = 64
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_BACKOFF_FIRST = 0.1  # seconds; doubled per attempt, with jitter
#: How long to remember that an endpoint has no native referrers API (a 404 there).
_NO_REFERRERS_API_TTL = 600.0

CredentialSources = Sequence[auth.DockerConfig]


class _Fields:
    """`repr` and `==` over the fields `_fields` names (in order) and no hash: what a
    mutable slotted dataclass has, without the cost of making one at import."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()

    def __repr__(self) -> str:
        shown = ", ".join([f"{name}={getattr(self, name)!r}" for name in self._fields])
        return f"{self.__class__.__qualname__}({shown})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            names = self._fields
            return tuple(getattr(self, n) for n in names) == tuple(getattr(other, n) for n in names)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # as a dataclass with eq: unhashable


class _Call(_Fields):
    """One public call: where it is going, its deadline, its credentials, its progress."""

    _fields = (
        "registry",
        "repository",
        "reference",
        "deadline",
        "budget",
        "sources",
        "fingerprint",
        "step",
        "last_failure",
        "working",
        "sink",
    )
    __slots__ = _fields
    registry: str
    repository: str
    reference: str
    deadline: float  # event-loop time
    budget: float
    sources: tuple[auth.DockerConfig, ...]
    fingerprint: str
    step: str
    last_failure: str | None
    #: per endpoint host, the chain position whose credentials worked in this call
    working: dict[str, int]
    #: where a streamed blob's body goes (fetch_blob_to); None: into memory
    sink: transport.BodySink | None

    def __init__(
        self,
        registry: str,
        repository: str,
        reference: str,
        deadline: float,
        budget: float,
        sources: tuple[auth.DockerConfig, ...],
        fingerprint: str,
        step: str = "starting",
        last_failure: str | None = None,
        working: dict[str, int] = records.FACTORY,
        sink: transport.BodySink | None = None,
    ) -> None:
        self.registry = registry
        self.repository = repository
        self.reference = reference
        self.deadline = deadline
        self.budget = budget
        self.sources = sources
        self.fingerprint = fingerprint
        self.step = step
        self.last_failure = last_failure
        self.working = {} if working is records.FACTORY else working
        self.sink = sink

    @property
    def scope(self) -> str:
        """The cache's name for the registry as these credentials see it (see _scope)."""
        return _build_scope(self.registry, self.fingerprint)

    def where(self, ref: str | None = None) -> dict[str, Any]:
        return {
            "registry": self.registry,
            "repository": self.repository,
            "reference": ref or self.reference,
        }

    def remaining(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()


class _Request(_Fields):
    """One registry API request as it goes down the layers (mirrors, retries, auth,
    redirects, transport): what is asked, of whom, and under which limits."""

    _fields = (
        "kind",
        "method",
        "url",
        "ref",
        "accept",
        "max_bytes",
        "hash_as",
        "with_credentials",
        "attempt",
        "body",
    )
    __slots__ = _fields
    kind: str  # KIND_*: the metric label, and what messages call it
    method: str
    url: str
    ref: str  # the tag or digest asked about, for messages
    accept: str | None
    max_bytes: int
    hash_as: model.Digest | None  # hash the body while it streams
    #: False for a request to another origin than the registry's (a referrers `Link`
    #: to elsewhere): it goes without credentials and answers no auth challenge.
    with_credentials: bool
    attempt: int
    body: bytes | None

    def __init__(
        self,
        kind: str,
        method: str,
        url: str,
        ref: str,
        accept: str | None,
        max_bytes: int,
        hash_as: model.Digest | None = None,
        with_credentials: bool = True,
        attempt: int = 1,
        body: bytes | None = None,
    ) -> None:
        self.kind = kind
        self.method = method
        self.url = url
        self.ref = ref
        self.accept = accept
        self.max_bytes = max_bytes
        self.hash_as = hash_as
        self.with_credentials = with_credentials
        self.attempt = attempt
        self.body = body

    @property
    def describe(self) -> str:
        return f"{self.method} {self.kind} {self.ref}"

    def moved(self, method: str, url: str) -> _Request:
        """A copy with another method and URL (a redirect), as `dataclasses.replace`."""
        return _Request(
            self.kind,
            method,
            url,
            self.ref,
            self.accept,
            self.max_bytes,
            self.hash_as,
            self.with_credentials,
            self.attempt,
            self.body,
        )


#: Bodies at least this large are parsed off the event loop: a hostile registry must
#: not stall admission of everything else while a big JSON document is read.
_PARSE_OFF_LOOP_BYTES = 64 * 1024


def _short(url: str) -> str:
    return url.split("?", 1)[0]


class RegistryClient:
    """An OCI distribution client for one operator process (or one CLI run).

    Create it inside the event loop and `await close()` it (or use `async with`).
    """

    def __init__(
        self,
        config: settings.RegistrySettings | None = None,
        *,
        credentials: Iterable[auth.DockerConfig] = (),
        cache_: cache.RegistryCache | None = None,
        transport_: transport.Transport | None = None,
    ) -> None:
        self.settings = config or settings.RegistrySettings()
        self.credentials = tuple(credentials)
        self.cache = cache_ or cache.RegistryCache.from_settings(self.settings)
        self.transport = transport_ or transport.Transport(
            max_concurrency=self.settings.max_concurrency, ca_bundle=self.settings.ca_bundle
        )
        self._endpoints: dict[str, tuple[routes.Endpoint, ...]] = {}
        #: last challenge seen per endpoint host: later requests authenticate up front
        self._challenges: dict[str, auth.Challenge] = {}
        #: endpoint host -> monotonic time until which its native referrers API is skipped
        self._no_referrers_api: dict[str, float] = {}

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.cache.close()
        await self.transport.close()

    # ------------------------------------------------------------------------ public API

    async def fetch_facts(
        self,
        ref: model.ImageReference,
        *,
        platform: platforms.PlatformChoice | model.Platform | None = None,
        credentials: CredentialSources = (),
        deadline: float | None = None,
    ) -> model.ImageFacts:
        """Digest, manifests, layers and config facts of `ref`.

        For an index: the platform images a node allowed by `platform` (None: any node)
        would run, chosen as containerd chooses (`platforms`); facts with no images
        when no such node runs any of its entries.
        """
        choice = platforms.build_choice(platform)
        cached = self._cached_facts(ref, choice, self._scope(ref, credentials))
        if cached is not None:
            return cached
        call = self._start(ref, credentials, deadline)
        key = ("facts", ref.registry, ref.repository, ref.reference, choice, call.fingerprint)
        return await self._shared(call, key, lambda: self._lookup_facts(call, ref, choice))

    async def resolve(
        self,
        ref: model.ImageReference,
        *,
        credentials: CredentialSources = (),
        deadline: float | None = None,
    ) -> model.Digest:
        """The digest a reference names now (a HEAD request; GET when no digest header)."""
        if ref.digest is not None:
            return ref.digest
        scope = self._scope(ref, credentials)
        self._raise_remembered_failure(scope, ref.repository, ref.reference)
        digest = self.cache.tags.get((scope, ref.repository, ref.reference))
        if digest is not None:
            return digest
        call = self._start(ref, credentials, deadline)
        key = ("resolve", ref.registry, ref.repository, ref.reference, call.fingerprint)
        return await self._shared(call, key, lambda: self._lookup_digest(call, ref.reference))

    async def fetch_manifest(
        self,
        ref: model.ImageReference,
        *,
        credentials: CredentialSources = (),
        deadline: float | None = None,
    ) -> manifests.FetchedManifest:
        """The manifest or index `ref` names (by digest when it has one), digest-checked."""
        scope = self._scope(ref, credentials)
        self._raise_remembered_failure(scope, ref.repository, ref.reference)
        if ref.digest is not None:
            hit = self.cache.manifests.get((scope, ref.repository, ref.digest))
            if hit is not None:
                return hit
        call = self._start(ref, credentials, deadline)
        key = ("manifest", ref.registry, ref.repository, ref.reference, call.fingerprint)
        return await self._shared(
            call, key, lambda: self._get_manifest(call, ref.reference, expected=ref.digest)
        )

    async def fetch_blob(
        self,
        ref: model.ImageReference,
        digest: model.Digest,
        *,
        max_bytes: int,
        credentials: CredentialSources = (),
        deadline: float | None = None,
    ) -> bytes:
        """A blob of `ref`'s repository, streamed under `max_bytes` and hashed on the way."""
        call = self._start(ref, credentials, deadline, about=digest)
        return await self._bounded(call, lambda: self._get_blob(call, digest, max_bytes=max_bytes))

    async def fetch_blob_to(
        self,
        ref: model.ImageReference,
        digest: model.Digest,
        sink: transport.BodySink,
        *,
        max_bytes: int,
        credentials: CredentialSources = (),
        deadline: float | None = None,
    ) -> None:
        """A blob streamed into `sink` instead of memory (layers of any size).

        The same checks as fetch_blob: at most `max_bytes`, hashed on the way and a
        DigestMismatchError when the bytes are not `digest` (after the sink got them: the
        sink must not trust them before this returns). A retried request calls
        `sink.begin()` again. What the sink raises leaves unchanged, without retries.
        """
        call = self._start(ref, credentials, deadline, about=digest)
        call.sink = sink
        try:
            await self._bounded(call, lambda: self._get_blob(call, digest, max_bytes=max_bytes))
        except transport.SinkError as e:
            raise e.error from None

    async def fetch_referrers(
        self,
        ref: model.ImageReference,
        digest: model.Digest,
        *,
        artifact_type: str | None = None,
        credentials: CredentialSources = (),
        deadline: float | None = None,
    ) -> tuple[manifests.Descriptor, ...]:
        """Descriptors of the manifests whose `subject` is `digest` (cosign bundles, SBOMs).

        The native `/v2/<repo>/referrers/<digest>` API first; when it 404s (distribution,
        GHCR, Docker Hub), the `sha256-<hex>` tag index cosign writes instead. Empty when
        neither exists.
        """
        call = self._start(ref, credentials, deadline, about=digest)
        key = ("referrers", ref.registry, ref.repository, digest, artifact_type, call.fingerprint)
        return await self._shared(
            call, key, lambda: self._lookup_referrers(call, digest, artifact_type)
        )

    # ------------------------------------------------------------------------ calls

    def _start(
        self,
        ref: model.ImageReference,
        credentials: CredentialSources,
        deadline: float | None,
        *,
        about: str | None = None,
    ) -> _Call:
        budget = self.settings.lookup_deadline if deadline is None else deadline
        sources = (*credentials, *self.credentials)
        chain = auth.build_credential_chain(sources, ref.registry, ref.repository)
        fingerprint = ",".join(c.fingerprint for c in chain) or "anonymous"
        return _Call(
            registry=ref.registry,
            repository=ref.repository,
            reference=about or ref.reference,
            deadline=asyncio.get_running_loop().time() + budget,
            budget=budget,
            sources=sources,
            fingerprint=fingerprint,
        )

    def _deadline_error(self, call: _Call, owner: _Call | None = None) -> errors.RegistryError:
        progress = owner or call
        last = f"; last failure: {progress.last_failure}" if progress.last_failure else ""
        return errors.RegistryTimeoutError(
            f"lookup did not finish within its {call.budget:g}s deadline "
            f"(it was {progress.step}{last})",
            **call.where(),
        )

    async def _bounded(self, call: _Call, work: Callable[[], Awaitable[T]]) -> T:
        """Run `work()` under the call's deadline; only RegistryErrors leave."""
        try:
            async with asyncio.timeout_at(call.deadline):
                return await work()
        except TimeoutError:
            raise self._deadline_error(call) from None
        except (errors.RegistryError, transport.SinkError):
            raise
        except Exception as e:
            # A bug or an answer nothing anticipated: fail this lookup, not the caller.
            logger.exception("unexpected error during registry lookup (%s)", call.step)
            raise errors.BadResponseError(
                f"unexpected {type(e).__name__} while {call.step}: {e}", **call.where()
            ) from e

    async def _shared(
        self, call: _Call, key: Hashable, work: Callable[[], Coroutine[Any, Any, T]]
    ) -> T:
        """Run `work()` once for all concurrent calls with the same `key`.

        The shared task runs under its creator's deadline; each caller waits under its
        own. A caller with time left after a shared task ran out of its creator's time
        starts the work again rather than inherit that timeout.
        """
        now = asyncio.get_running_loop().time

        def reusable(flight: cache.Flight[Any]) -> bool:
            owner = flight.state
            return not isinstance(owner, _Call) or owner.deadline > now()

        for _round in range(2):
            flight, joined = self.cache.inflight.join(
                key, lambda: self._bounded(call, work), state=call, reusable=reusable
            )
            try:
                async with asyncio.timeout_at(call.deadline):
                    return await asyncio.shield(flight.task)
            except TimeoutError:
                owner = flight.state if isinstance(flight.state, _Call) else None
                raise self._deadline_error(call, owner) from None
            except errors.RegistryTimeoutError:
                if not joined or call.remaining() <= 0:
                    raise
        raise self._deadline_error(call)

    # ------------------------------------------------------------------------ caches

    def _raise_remembered_failure(self, registry: str, repository: str, ref: str) -> None:
        failure = self.cache.recall_failure((registry, repository, ref))
        if failure is not None:
            raise failure

    def _scope(self, ref: model.ImageReference, credentials: CredentialSources) -> str:
        """The cache's name for `ref`'s registry as `credentials` see it.

        What was read anonymously is shared by every caller; what one set of credentials
        read is kept apart, so a pod without them is never answered from it (no facts,
        digests or sizes of private images leak through the cache).
        """
        return _scope_of(ref.registry, ref.repository, (*credentials, *self.credentials))

    def _cached_facts(
        self, ref: model.ImageReference, choice: platforms.PlatformChoice, scope: str
    ) -> model.ImageFacts | None:
        """The facts for `ref` without any await, or None (the warm path: keep it short)."""
        self._raise_remembered_failure(scope, ref.repository, ref.reference)
        digest = ref.digest or self.cache.tags.get((scope, ref.repository, ref.reference))
        if digest is None:
            return None
        facts = self.cache.facts.get((scope, ref.repository, digest, choice))
        if facts is None:
            return None
        return facts if facts.reference == ref else records.replace(facts, reference=ref)

    # ------------------------------------------------------------------------ lookups

    async def _lookup_facts(
        self, call: _Call, ref: model.ImageReference, choice: platforms.PlatformChoice
    ) -> model.ImageFacts:
        top = await self._get_manifest(call, ref.reference, expected=ref.digest)
        if isinstance(top.content, manifests.ImageIndex):
            images = await self._runnable_images(call, top.content, choice)
        else:
            # A single manifest is what every node pulls, whatever its platform.
            images = [await self._platform_image(call, top.digest, None, fetched=top)]
        facts = manifests.build_facts(ref, top, images)
        if not any(image.config_problem for image in images):  # a missing blob may come
            self.cache.facts.put((call.scope, call.repository, top.digest, choice), facts)
        return facts

    async def _runnable_images(
        self, call: _Call, index: manifests.ImageIndex, choice: platforms.PlatformChoice
    ) -> list[model.PlatformImage]:
        """The platform images nodes the pod may land on would run: the one the first
        node platform (a base variant: amd64 before amd64/v2) takes comes first.

        For every node platform `choice` allows, the entry containerd would take
        (`platforms.select_entries`), nested indexes followed (at most
        `platforms.MAX_NESTING` deep). Fetches of one level run side by side.
        """
        nodes = platforms.build_node_platforms(
            choice, [d.platform for d in index.manifests if d.platform is not None]
        )
        chosen: dict[model.Digest, tuple[int, model.PlatformImage]] = {}
        # (index, the nodes still walking it, depth); the top index first
        pending: list[tuple[manifests.ImageIndex, tuple[model.Platform, ...], int]] = [
            (index, nodes, 1)
        ]
        order = 0
        while pending:
            level, pending = pending, []
            wanted: dict[model.Digest, tuple[manifests.Descriptor, list[model.Platform], int]] = {}
            for current, walking, depth in level:
                entries = manifests.build_entries(current)
                for node in walking:
                    for entry in platforms.select_entries(entries, node):
                        descriptor = current.manifests[entry.position]
                        if descriptor.media_type in manifests.INDEX_TYPES and (
                            depth >= platforms.MAX_NESTING
                        ):
                            raise errors.BadResponseError(
                                f"image index nests indexes more than {platforms.MAX_NESTING} "
                                f"deep (entry {descriptor.digest})",
                                **call.where(descriptor.digest),
                            )
                        wanted.setdefault(descriptor.digest, (descriptor, [], depth))[1].append(
                            node
                        )
            runnable = [
                (d, n) for d, n, _ in wanted.values() if d.media_type in manifests.MANIFEST_TYPES
            ]
            nested = [
                (d, n, depth)
                for d, n, depth in wanted.values()
                if d.media_type in manifests.INDEX_TYPES
            ]
            # Other media types name nothing a node can run: the pull would fail there.
            if len(chosen) + len(runnable) > MAX_PLATFORM_IMAGES:
                raise errors.BadResponseError(
                    f"image index offers more than {MAX_PLATFORM_IMAGES} platform images the "
                    "pod's nodes could run",
                    **call.where(),
                )
            images, indexes = await asyncio.gather(
                _gather_all(self._shared_image(call, d) for d, _ in runnable),
                _gather_all(
                    self._get_manifest(call, d.digest, expected=d.digest) for d, _, _ in nested
                ),
            )
            for (descriptor, reached), image in zip(runnable, images, strict=True):
                # An entry without a platform runs where its config's os/arch match.
                if descriptor.platform is None and not any(
                    platforms.evaluate_config_runs_on(image.config, node) for node in reached
                ):
                    continue
                if image.digest not in chosen:
                    chosen[image.digest] = (order, image)
                    order += 1
            for (descriptor, reached, level_depth), fetched in zip(nested, indexes, strict=True):
                if not isinstance(fetched.content, manifests.ImageIndex):
                    raise errors.BadResponseError(
                        f"index entry {descriptor.digest} is declared an index but is a manifest",
                        **call.where(descriptor.digest),
                    )
                pending.append((fetched.content, tuple(dict.fromkeys(reached)), level_depth + 1))
        return [image for _, image in sorted(chosen.values(), key=lambda item: item[0])]

    async def _shared_image(
        self, call: _Call, descriptor: manifests.Descriptor
    ) -> model.PlatformImage:
        """An index entry's image; two tags of one index looked up at once share the work."""
        key = (
            "image",
            call.registry,
            call.repository,
            descriptor.digest,
            descriptor.platform,
            call.fingerprint,
        )
        return await self._shared(
            call, key, lambda: self._platform_image(call, descriptor.digest, descriptor.platform)
        )

    async def _platform_image(
        self,
        call: _Call,
        digest: model.Digest,
        platform: model.Platform | None,
        *,
        fetched: manifests.FetchedManifest | None = None,
    ) -> model.PlatformImage:
        key = (call.scope, call.repository, digest, platform)
        hit = self.cache.images.get(key)
        if hit is not None:
            return hit
        if fetched is None:
            fetched = await self._get_manifest(call, digest, expected=digest)
        content = fetched.content
        if not isinstance(content, manifests.ImageManifest):
            raise errors.BadResponseError(
                f"index entry {digest} is declared a manifest but is an index",
                **call.where(digest),
            )
        config = manifests.NO_CONFIG
        problem: str | None = None
        if content.is_image:
            try:
                config = await self._get_config(call, content.config)
            except errors.RegistryError as e:
                if e.outage:
                    raise
                # What the registry served is unusable: only the rules reading the
                # config (the user) refuse for it; sizes and signatures still decide.
                problem = str(e)
        try:
            image = manifests.build_platform_image(fetched, platform=platform, config=config)
        except manifests.ManifestError as e:
            raise errors.BadResponseError(str(e), **call.where(digest)) from e
        if problem is None:
            self.cache.images.put(key, image)
            return image
        return records.replace(image, config_problem=problem)

    async def _get_config(self, call: _Call, descriptor: manifests.Descriptor) -> model.ImageConfig:
        limit = self.settings.max_config_bytes
        if descriptor.size > limit:
            raise errors.TooLargeError(
                f"image config {descriptor.digest} is {descriptor.size} bytes (per its "
                f"descriptor), over the limit of {limit}",
                **call.where(descriptor.digest),
            )
        body = await self._get_blob(call, descriptor.digest, max_bytes=descriptor.size)
        try:
            return manifests.parse_config(body)
        except manifests.ManifestError as e:
            raise errors.BadResponseError(str(e), **call.where(descriptor.digest)) from e

    async def _get_manifest(
        self, call: _Call, ref: str, *, expected: model.Digest | None
    ) -> manifests.FetchedManifest:
        if expected is not None:
            hit = self.cache.manifests.get((call.scope, call.repository, expected))
            if hit is not None:
                return hit
        failure_key = (call.scope, call.repository, ref)
        self._raise_remembered_failure(*failure_key)

        def parse(response: transport.Response) -> manifests.FetchedManifest:
            try:
                return manifests.parse_manifest(
                    response.body,
                    content_type=response.header("Content-Type"),
                    expected_digest=expected,
                    claimed_digest=response.header("Docker-Content-Digest"),
                )
            except manifests.DigestMismatch as e:
                raise errors.DigestMismatchError(f"manifest {ref}: {e}", **call.where(ref)) from e
            except manifests.ManifestError as e:
                raise errors.BadResponseError(f"manifest {ref}: {e}", **call.where(ref)) from e

        try:
            fetched = await self._request(
                call,
                kind=KIND_MANIFEST,
                method="GET",
                url=lambda endpoint: routes.build_manifest_url(endpoint, call.repository, ref),
                ref=ref,
                accept=manifests.ACCEPT,
                max_bytes=self.settings.max_manifest_bytes,
                parse=parse,
            )
        except errors.NotFoundError as e:
            self.cache.remember_failure(failure_key, e)
            raise
        self.cache.manifests.put((call.scope, call.repository, fetched.digest), fetched)
        if expected is None:
            self.cache.remember_digest((call.scope, call.repository, ref), fetched.digest)
        return fetched

    async def _lookup_digest(self, call: _Call, tag: str) -> model.Digest:
        def parse(response: transport.Response) -> model.Digest | None:
            header = response.header("Docker-Content-Digest")
            try:
                return reference.parse_digest(header.strip()) if header else None
            except ValueError:
                return None

        failure_key = (call.scope, call.repository, tag)
        try:
            digest = await self._request(
                call,
                kind=KIND_MANIFEST,
                method="HEAD",
                url=lambda endpoint: routes.build_manifest_url(endpoint, call.repository, tag),
                ref=tag,
                accept=manifests.ACCEPT,
                max_bytes=0,
                parse=parse,
            )
        except errors.NotFoundError as e:
            self.cache.remember_failure(failure_key, e)
            raise
        if digest is None:  # a registry that does not say: fetch and hash
            return (await self._get_manifest(call, tag, expected=None)).digest
        self.cache.remember_digest((call.scope, call.repository, tag), digest)
        return digest

    async def _get_blob(self, call: _Call, digest: model.Digest, *, max_bytes: int) -> bytes:
        def parse(response: transport.Response) -> bytes:
            if response.digest != digest:
                raise errors.DigestMismatchError(
                    f"blob body hashes to {response.digest}, not {digest}", **call.where(digest)
                )
            return response.body

        return await self._request(
            call,
            kind=KIND_BLOB,
            method="GET",
            url=lambda endpoint: routes.build_blob_url(endpoint, call.repository, digest),
            ref=digest,
            accept=None,
            max_bytes=max_bytes,
            hash_as=digest,
            parse=parse,
        )

    async def _lookup_referrers(
        self, call: _Call, digest: model.Digest, artifact_type: str | None
    ) -> tuple[manifests.Descriptor, ...]:
        upstream = self._get_endpoints(call.registry)[-1]
        skip_until = self._no_referrers_api.get(upstream.host, 0.0)
        if skip_until <= time.monotonic():
            try:
                return await self._native_referrers(call, digest, artifact_type)
            except errors.NotFoundError:
                self._no_referrers_api[upstream.host] = time.monotonic() + _NO_REFERRERS_API_TTL
        tag = reference.build_referrers_tag(digest)
        try:
            fetched = await self._get_manifest(call, tag, expected=None)
        except errors.NotFoundError:
            return ()
        if not isinstance(fetched.content, manifests.ImageIndex):
            raise errors.BadResponseError(
                f"referrers tag {tag} holds a manifest, not an index", **call.where(tag)
            )
        return manifests.build_referrers(fetched.content, artifact_type=artifact_type)

    async def _native_referrers(
        self, call: _Call, digest: model.Digest, artifact_type: str | None
    ) -> tuple[manifests.Descriptor, ...]:
        found: list[manifests.Descriptor] = []
        next_url: str | None = None

        def parse(
            response: transport.Response,
        ) -> tuple[tuple[manifests.Descriptor, ...], str | None]:
            try:
                content = manifests.parse_content(
                    response.body, content_type=response.header("Content-Type")
                )
            except manifests.ManifestError as e:
                raise errors.BadResponseError(f"referrers of {digest}: {e}", **call.where()) from e
            if not isinstance(content, manifests.ImageIndex):
                raise errors.BadResponseError(
                    f"referrers of {digest}: the answer is not an index", **call.where()
                )
            applied = response.header("OCI-Filters-Applied") or ""
            filtered = "artifactType" in [item.strip() for item in applied.split(",")]
            descriptors = manifests.build_referrers(
                content, artifact_type=artifact_type, filtered=filtered
            )
            return descriptors, routes.parse_next_link(response.header("Link"))

        for _page in range(MAX_REFERRER_PAGES):
            page_url = next_url

            def url(endpoint: routes.Endpoint, page_url: str | None = page_url) -> str:
                first = routes.build_referrers_url(
                    endpoint, call.repository, digest, artifact_type=artifact_type
                )
                if page_url is None:
                    return first
                target = routes.build_redirect_url(first, page_url)
                if not routes.evaluate_followable(first, target):
                    raise errors.BadResponseError(
                        f"referrers of {digest}: refused next page {_short(target)} "
                        f"(a Link from HTTPS to plain HTTP, or not HTTP at all)",
                        **call.where(),
                    )
                return target

            def same_origin(endpoint: routes.Endpoint, target: str) -> bool:
                # A next page elsewhere is read without the registry's credentials: they
                # only ever go back where they were asked for (as with redirects).
                first = routes.build_referrers_url(
                    endpoint, call.repository, digest, artifact_type=None
                )
                return routes.build_origin(first) == routes.build_origin(target)

            descriptors, next_url = await self._request(
                call,
                kind=KIND_REFERRERS,
                method="GET",
                url=url,
                ref=digest,
                accept=manifests.OCI_INDEX,
                max_bytes=self.settings.max_manifest_bytes,
                parse=parse,
                with_credentials=same_origin,
            )
            found.extend(descriptors)
            if len(found) > manifests.MAX_INDEX_ENTRIES:
                raise errors.BadResponseError(
                    f"referrers of {digest}: more than {manifests.MAX_INDEX_ENTRIES} referrers",
                    **call.where(),
                )
            if next_url is None:
                break
        return tuple(found)

    # ------------------------------------------------------------------------ requests

    def _get_endpoints(self, registry: str) -> tuple[routes.Endpoint, ...]:
        endpoints = self._endpoints.get(registry)
        if endpoints is None:
            endpoints = routes.build_endpoints(
                registry,
                insecure=self.settings.insecure_registries,
                mirrors=self.settings.mirrors,
            )
            self._endpoints[registry] = endpoints
        return endpoints

    async def _request(
        self,
        call: _Call,
        *,
        kind: str,
        method: str,
        url: Callable[[routes.Endpoint], str],
        ref: str,
        accept: str | None,
        max_bytes: int,
        parse: Callable[[transport.Response], T],
        hash_as: model.Digest | None = None,
        with_credentials: Callable[[routes.Endpoint, str], bool] | None = None,
    ) -> T:
        """One API request, over the mirrors then the registry; `parse` checks the answer.

        A mirror that fails in any way (down, 404, bad bytes) gives way to the next
        endpoint; the registry's own error is the one raised. `with_credentials` says,
        per endpoint and URL, whether credentials may go along (default: yes).
        """

        def request_for(endpoint: routes.Endpoint) -> _Request:
            target = url(endpoint)
            return _Request(
                kind=kind,
                method=method,
                url=target,
                ref=ref,
                accept=accept,
                max_bytes=max_bytes,
                hash_as=hash_as,
                with_credentials=with_credentials is None or with_credentials(endpoint, target),
            )

        endpoints = self._get_endpoints(call.registry)
        for endpoint in endpoints[:-1]:
            try:
                response = await self._with_retries(call, endpoint, request_for(endpoint))
                return await _parse(parse, response)
            except errors.RegistryError as e:
                logger.info("mirror %s failed, trying the next endpoint: %s", endpoint.host, e)
        endpoint = endpoints[-1]
        response = await self._with_retries(call, endpoint, request_for(endpoint))
        return await _parse(parse, response)

    def _backoff(self, attempt: int) -> float:
        # Jitter: clients that failed together should not all come back together.
        return float(_BACKOFF_FIRST * (2 ** (attempt - 1)) * random.uniform(0.5, 1.0))

    async def _with_retries(
        self, call: _Call, endpoint: routes.Endpoint, request: _Request
    ) -> transport.Response:
        """Retry 5xx, broken connections, request timeouts and 429 inside the deadline."""
        request.attempt = 0
        while True:
            request.attempt += 1
            attempt = request.attempt
            try:
                response = await self._with_auth(call, endpoint, request)
                return self._check_status(call, endpoint, request, response)
            except errors.RateLimitedError as e:
                wait = e.retry_after if e.retry_after is not None else self._backoff(attempt)
                left = call.remaining()
                if attempt > self.settings.retries or wait >= left:
                    if e.retry_after is not None and e.retry_after >= left:
                        e.message += (
                            f"; Retry-After {e.retry_after:g}s does not fit in the "
                            f"{max(left, 0):.1f}s left before the deadline"
                        )
                    raise
                call.last_failure = e.message
                call.step = (
                    f"waiting {wait:.2f}s (Retry-After) to retry {request.method} "
                    f"{_short(request.url)}"
                )
                await asyncio.sleep(wait)
            except (errors.ServerError, errors.UnreachableError, errors.RegistryTimeoutError) as e:
                if isinstance(e, errors.UnreachableError) and not isinstance(
                    e.__cause__, transport.ConnectError
                ):
                    raise  # TLS trust: the same again will fail the same way
                wait = self._backoff(attempt)
                if attempt > self.settings.retries or wait >= call.remaining():
                    if attempt > 1:
                        e.message += f" (after {attempt} attempts)"
                    raise
                call.last_failure = e.message
                call.step = f"waiting {wait:.2f}s to retry {request.method} {_short(request.url)}"
                await asyncio.sleep(wait)

    def _check_status(
        self,
        call: _Call,
        endpoint: routes.Endpoint,
        request: _Request,
        response: transport.Response,
    ) -> transport.Response:
        status = response.status
        if 200 <= status < 300:
            return response
        said = routes.parse_error_body(response.body) if response.body else ""
        detail = f": {said}" if said else ""
        via = f" via mirror {endpoint.host}" if endpoint.mirror_of else ""
        kind = request.kind
        what = f"{request.describe}{via}"
        where = call.where(request.ref)
        if status == 404:
            raise errors.NotFoundError(f"{what}: no such {kind}{detail}", status=status, **where)
        if status in (401, 403):
            raise errors.UnauthorizedError(f"{what}: access denied{detail}", status=status, **where)
        if status == 429:
            retry_after = routes.parse_retry_after(response.header("Retry-After"), now=time.time())
            raise errors.RateLimitedError(
                f"{what}: too many requests{detail}",
                status=status,
                retry_after=retry_after,
                **where,
            )
        if status >= 500:
            raise errors.ServerError(f"{what}: registry failed{detail}", status=status, **where)
        raise errors.BadResponseError(f"{what}: unexpected answer{detail}", status=status, **where)

    async def _with_auth(
        self, call: _Call, endpoint: routes.Endpoint, request: _Request
    ) -> transport.Response:
        """Send with the first credentials that work; answer 401 challenges."""
        if not request.with_credentials:
            return await self._send(call, endpoint, request, None)
        registry = reference.build_canonical_host(endpoint.host) if endpoint.mirror_of else None
        chain: tuple[auth.Credentials | None, ...] = auth.build_credential_chain(
            call.sources, registry or call.registry, call.repository
        ) or (None,)
        first = call.working.get(endpoint.host, 0)
        order = chain[first:] + chain[:first]
        scope = auth.build_scope(call.repository)
        refusals: list[str] = []
        ref = request.ref

        for credentials in order:
            who = credentials.describe() if credentials else "anonymous access"
            known = self._challenges.get(endpoint.host)
            try:
                authorization = await self._authorization(
                    call, endpoint, credentials, known, scope, ref
                )
                response = await self._send(call, endpoint, request, authorization)
                if response.status != 401:
                    call.working[endpoint.host] = chain.index(credentials)
                    return response
                challenges = auth.parse_challenges(response.header_all("WWW-Authenticate"))
                challenge = _pick_challenge(challenges)
                if challenge is None:
                    schemes = ", ".join(c.scheme for c in challenges) or "none"
                    refusals.append(f"{who}: HTTP 401 with no usable challenge ({schemes})")
                    continue
                self._challenges[endpoint.host] = challenge
                if challenge.scheme == "basic":
                    if credentials is None or not credentials.username:
                        refusals.append(
                            f"{who}: the registry wants Basic credentials and no source has "
                            f"any for {endpoint.host}"
                        )
                        continue
                    if authorization is not None and authorization.startswith("Basic "):
                        refusals.append(f"{who}: refused (Basic)")
                        continue
                else:
                    self.cache.tokens.pop(_token_key(challenge, scope, credentials))
                authorization = await self._authorization(
                    call, endpoint, credentials, challenge, scope, ref
                )
                response = await self._send(call, endpoint, request, authorization)
                if response.status != 401:
                    call.working[endpoint.host] = chain.index(credentials)
                    return response
                again = _pick_challenge(
                    auth.parse_challenges(response.header_all("WWW-Authenticate"))
                )
                if again is not None and again.error == "insufficient_scope":
                    refusals.append(f"{who}: the token grants no pull access to {call.repository}")
                else:
                    refusals.append(f"{who}: refused")
            except errors.UnauthorizedError as e:
                refusals.append(f"{who}: {e.message}")
        raise errors.UnauthorizedError(
            f"{request.describe}: " + "; ".join(refusals), status=401, **call.where(ref)
        )

    async def _authorization(
        self,
        call: _Call,
        endpoint: routes.Endpoint,
        credentials: auth.Credentials | None,
        challenge: auth.Challenge | None,
        scope: str,
        ref: str,
    ) -> str | None:
        """The Authorization header for `credentials` under the registry's known challenge."""
        if credentials is not None and credentials.registry_token:
            return f"Bearer {credentials.registry_token}"
        if challenge is None:
            return None  # first contact: credentials only go where they are asked for
        if challenge.scheme == "basic":
            if credentials is None or not credentials.username:
                return None
            return auth.build_basic_authorization(credentials)
        token = await self._token(call, endpoint, credentials, challenge, scope, ref)
        return token.authorization

    async def _token(
        self,
        call: _Call,
        endpoint: routes.Endpoint,
        credentials: auth.Credentials | None,
        challenge: auth.Challenge,
        scope: str,
        ref: str,
    ) -> auth.Token:
        key = _token_key(challenge, scope, credentials)
        token = self.cache.tokens.get(key)
        if token is not None:
            return token
        return await self._shared(
            call,
            ("token", *key),
            lambda: self._fetch_token(call, endpoint, credentials, challenge, scope, ref),
        )

    async def _fetch_token(
        self,
        call: _Call,
        endpoint: routes.Endpoint,
        credentials: auth.Credentials | None,
        challenge: auth.Challenge,
        scope: str,
        ref: str,
    ) -> auth.Token:
        scopes = [scope]
        if challenge.scope and challenge.scope != scope and challenge.error is None:
            scopes.append(challenge.scope)
        try:
            token_request = auth.build_token_request(
                challenge,
                scopes=scopes,
                credentials=credentials,
                allow_plain_http=endpoint.plain_http,
            )
        except auth.ChallengeError as e:
            raise errors.BadResponseError(str(e), **call.where(ref)) from e
        call.step = f"fetching a token from {_short(token_request.url)}"
        request = _Request(
            kind=KIND_TOKEN,
            method=token_request.method,
            url=token_request.url,
            ref=ref,
            accept=None,
            max_bytes=MAX_TOKEN_BYTES,
            body=token_request.body,
        )
        response = await self._transport_request(
            call, endpoint, request, dict(token_request.headers)
        )
        if response.status in (401, 403):
            said = routes.parse_error_body(response.body)
            raise errors.UnauthorizedError(
                f"token endpoint {_short(token_request.url)} refused the credentials"
                + (f": {said}" if said else ""),
                status=response.status,
                **call.where(ref),
            )
        if response.status != 200:
            self._check_status(call, endpoint, request, response)
            raise errors.BadResponseError(
                f"token endpoint answered HTTP {response.status}",
                status=response.status,
                **call.where(ref),
            )
        try:
            token = auth.parse_token_response(response.body, now=self.cache.now())
        except auth.ChallengeError as e:
            raise errors.BadResponseError(
                f"token endpoint {_short(token_request.url)}: {e}", **call.where(ref)
            ) from e
        self.cache.tokens.put(_token_key(challenge, scope, credentials), token)
        return token

    async def _send(
        self,
        call: _Call,
        endpoint: routes.Endpoint,
        request: _Request,
        authorization: str | None,
    ) -> transport.Response:
        """One request and its redirects; credentials only go back to the same origin."""
        origin = routes.build_origin(request.url)
        current = request.url
        method = request.method
        for _hop in range(MAX_REDIRECTS + 1):
            headers: dict[str, str] = {}
            if request.accept:
                headers["Accept"] = request.accept
            if authorization and routes.build_origin(current) == origin:
                headers["Authorization"] = authorization
            suffix = f" (attempt {request.attempt})" if request.attempt > 1 else ""
            call.step = f"waiting for {method} {_short(current)}{suffix}"
            response = await self._transport_request(
                call, endpoint, request.moved(method, current), headers
            )
            if response.status not in _REDIRECTS:
                return response
            location = response.header("Location")
            if not location:
                raise errors.BadResponseError(
                    f"{request.describe}: HTTP {response.status} without a Location",
                    status=response.status,
                    **call.where(request.ref),
                )
            target = routes.build_redirect_url(current, location)
            if not routes.evaluate_followable(current, target):
                raise errors.BadResponseError(
                    f"{request.describe}: refused redirect from {_short(current)} to "
                    f"{_short(target)} (never from HTTPS to plain HTTP)",
                    status=response.status,
                    **call.where(request.ref),
                )
            if response.status == 303:
                method = "GET" if method != "HEAD" else method
            current = target
        raise errors.BadResponseError(
            f"{request.describe}: more than {MAX_REDIRECTS} redirects", **call.where(request.ref)
        )

    async def _transport_request(
        self,
        call: _Call,
        endpoint: routes.Endpoint,
        request: _Request,
        headers: dict[str, str],
    ) -> transport.Response:
        time_limit = min(self.settings.request_timeout, max(call.remaining(), 0.001))
        try:
            return await self.transport.request(
                request.method,
                request.url,
                headers=headers,
                time_limit=time_limit,
                max_bytes=request.max_bytes,
                kind=request.kind,
                registry=endpoint.host,
                body=request.body,
                hash_as=request.hash_as,
                sink=call.sink if request.kind == KIND_BLOB else None,
            )
        except transport.BodyTooLarge as e:
            raise errors.TooLargeError(str(e), **call.where(request.ref)) from e
        except transport.RequestTimeout as e:
            raise errors.RegistryTimeoutError(str(e), **call.where(request.ref)) from e
        except transport.TransportError as e:
            raise errors.UnreachableError(str(e), **call.where(request.ref)) from e


async def _parse(parse: Callable[[transport.Response], T], response: transport.Response) -> T:
    """Run `parse`; off the event loop for a large body (see _PARSE_OFF_LOOP_BYTES)."""
    if len(response.body) >= _PARSE_OFF_LOOP_BYTES:
        return await asyncio.to_thread(parse, response)
    return parse(response)


def _build_scope(registry: str, fingerprint: str) -> str:
    return registry if fingerprint == "anonymous" else f"{registry}#{fingerprint}"


@functools.lru_cache(maxsize=4096)
def _scope_of(registry: str, repository: str, sources: tuple[auth.DockerConfig, ...]) -> str:
    # Memoised: the warm admission path asks this for every image of every review.
    chain = auth.build_credential_chain(sources, registry, repository)
    return _build_scope(registry, ",".join(c.fingerprint for c in chain) or "anonymous")


def _pick_challenge(challenges: Sequence[auth.Challenge]) -> auth.Challenge | None:
    """Bearer when offered (scoped, expiring), else Basic; other schemes are not spoken."""
    for scheme in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == scheme and (scheme == "basic" or challenge.realm):
                return challenge
    return None


def _token_key(
    challenge: auth.Challenge, scope: str, credentials: auth.Credentials | None
) -> tuple[str, str, str, str]:
    who = credentials.fingerprint if credentials is not None else "anonymous"
    return (challenge.realm or "", challenge.service or "", scope, who)


async def _gather_all(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """Run concurrently; on the first failure cancel the rest and raise that failure."""
    tasks = [asyncio.ensure_future(item) for item in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
