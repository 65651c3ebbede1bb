"""ImagePolicies as the checker uses them: parsed, with key material resolved.

A policy is loaded once per change (and re-resolved periodically so a rotated Secret is
picked up) and kept in a `PolicyStore`; admission reads a snapshot without any I/O.
A policy that cannot be used keeps its match scope (or `**` when even that is broken)
and its reason, so the images it covers are refused with that reason (fail closed).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

from imageward import errors, records
from imageward.policy import globs, model
from imageward.signatures import authorities as signatures_authorities
from imageward.signatures import model as signatures_model

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (PEP 781)

if TYPE_CHECKING:
    from typing import Any

    from imageward.attestations import evaluate as attestations_evaluate

#: Reads `data[key]` of a Secret (base64-decoded) or ConfigMap; None when it does not exist.
SecretReader = Callable[[model.SecretKeyRef], Awaitable[bytes | None]]
ConfigMapReader = Callable[[model.ConfigMapKeyRef], Awaitable[str | None]]

_MATCH_EVERYTHING = model.Match(images=(globs.parse_image_pattern("**"),))


_set = object.__setattr__  # how a frozen Record's __init__ sets its fields


class LoadedPolicy(records.Record):
    """A policy as the checker uses it: parsed and its authorities resolved, or, when it
    cannot be used, its match scope and why."""

    __slots__ = ("attestations", "authorities", "error", "generation", "match", "name", "policy")
    name: str
    generation: int
    match: model.Match
    policy: model.ImagePolicy | None  # None: unusable, see `error`
    error: errors.PolicyError | None
    authorities: tuple[signatures_authorities.Authority, ...]
    #: `rules.attestations`, authorities resolved and CEL conditions compiled.
    attestations: tuple[attestations_evaluate.LoadedEntry, ...]

    def __init__(
        self,
        name: str,
        generation: int,
        match: model.Match,
        policy: model.ImagePolicy | None,
        error: errors.PolicyError | None = None,
        authorities: tuple[signatures_authorities.Authority, ...] = (),
        attestations: tuple[attestations_evaluate.LoadedEntry, ...] = (),
    ) -> None:
        _set(self, "name", name)
        _set(self, "generation", generation)
        _set(self, "match", match)
        _set(self, "policy", policy)
        _set(self, "error", error)
        _set(self, "authorities", authorities)
        _set(self, "attestations", attestations)

    @property
    def usable(self) -> bool:
        return self.policy is not None

    @property
    def reason(self) -> str:
        return self.error.reason if self.error else ""


def _unusable(obj: Mapping[str, Any], error: errors.PolicyError) -> LoadedPolicy:
    try:
        match = model.parse_match(obj)
    except errors.PolicyError:
        match = _MATCH_EVERYTHING  # cannot tell what it covers: cover everything
    metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
    generation = metadata.get("generation") if isinstance(metadata, Mapping) else None
    return LoadedPolicy(
        name=error.policy,
        generation=generation if isinstance(generation, int) else 0,
        match=match,
        policy=None,
        error=error,
    )


async def load_policy(
    obj: Mapping[str, Any],
    *,
    read_secret: SecretReader | None = None,
    read_config_map: ConfigMapReader | None = None,
) -> LoadedPolicy:
    """Parse `obj` and resolve every authority's key material; never raises."""
    try:
        policy = model.parse_policy(obj)
    except errors.PolicyError as e:
        return _unusable(obj, e)
    try:
        signatures = policy.rules.signatures
        authorities = (
            await _resolve_authorities(
                policy.name, signatures.authorities, read_secret, read_config_map
            )
            if signatures is not None
            else ()
        )
        attestations = tuple(
            [
                await _load_attestation(policy.name, entry, read_secret, read_config_map)
                for entry in policy.rules.attestations
            ]
        )
    except errors.PolicyError as e:
        return records.replace(_unusable(obj, e), match=policy.match, generation=policy.generation)
    return LoadedPolicy(
        name=policy.name,
        generation=policy.generation,
        match=policy.match,
        policy=policy,
        authorities=authorities,
        attestations=attestations,
    )


def load_policy_offline(obj: Mapping[str, Any]) -> LoadedPolicy:
    """`load_policy` with no cluster to read Secrets or ConfigMaps from (`imageward check`).

    Without readers nothing in `load_policy` waits (a reference to a Secret or ConfigMap
    makes the policy unusable at once), so its coroutine is run to completion here,
    without an event loop: the CLI decides most runs before it needs asyncio at all.
    """
    coroutine = load_policy(obj)
    try:
        coroutine.send(None)
    except StopIteration as finished:
        loaded: LoadedPolicy = finished.value
        return loaded
    coroutine.close()
    raise RuntimeError("load_policy waited for I/O although it was given no reader")


async def _load_attestation(
    policy: str,
    entry: model.Attestation,
    read_secret: SecretReader | None,
    read_config_map: ConfigMapReader | None,
) -> attestations_evaluate.LoadedEntry:
    """An attestation entry's authorities resolved and its conditions compiled (once)."""
    from imageward.attestations import cel
    from imageward.attestations import evaluate as attestations_evaluate

    where = f"spec.rules.attestations[{entry.name}]"
    try:
        authorities = await _resolve_authorities(
            policy, entry.authorities, read_secret, read_config_map
        )
    except errors.PolicyError as e:
        raise errors.PolicyError(policy, f"{where}: {e.reason}") from e
    programs = []
    for index, condition in enumerate(entry.conditions):
        try:
            programs.append(cel.compile_condition(condition.expression))
        except cel.CelError as e:
            raise errors.PolicyError(policy, f"{where}.conditions[{index}]: {e}") from None
    return attestations_evaluate.LoadedEntry(entry, authorities, tuple(programs))


async def _resolve_authorities(
    policy_name: str,
    authorities: Sequence[model.Authority],
    read_secret: SecretReader | None,
    read_config_map: ConfigMapReader | None,
) -> tuple[signatures_authorities.Authority, ...]:
    resolved: list[signatures_authorities.Authority] = []
    for authority in authorities:
        try:
            if authority.key is not None:
                # Imported only for key authorities: policies without any (and the
                # `imageward check` runs that load only those) need no cryptography.
                from imageward.signatures import keys

                pem = await _key_pem(authority.name, authority.key, read_secret)
                resolved.append(
                    signatures_authorities.KeyAuthority(
                        name=authority.name,
                        key=keys.parse_public_key(pem, authority=authority.name),
                    )
                )
            elif authority.keyless is not None:
                # Imported only for keyless authorities: sigstore is slow to import.
                from imageward.signatures import keyless

                spec = authority.keyless
                identity = keyless.parse_identity(
                    authority=authority.name,
                    issuer=spec.issuer,
                    issuer_regexp=spec.issuer_regexp,
                    subject=spec.subject,
                    subject_regexp=spec.subject_regexp,
                )
                root_json = await _trusted_root(authority.name, spec, read_config_map)
                resolved.append(
                    signatures_authorities.KeylessAuthority(
                        name=authority.name,
                        identity=identity,
                        trusted_root=keyless.parse_trusted_root(
                            root_json, authority=authority.name
                        ),
                    )
                )
            elif authority.notation is not None:
                resolved.append(
                    await _notation_authority(
                        authority.name, authority.notation, read_secret, read_config_map
                    )
                )
        except signatures_model.AuthorityError as e:
            raise errors.PolicyError(policy_name, str(e)) from e
    _refuse_duplicates(policy_name, resolved)
    return tuple(resolved)


def _refuse_duplicates(
    policy: str, authorities: Iterable[signatures_authorities.Authority]
) -> None:
    """Two authority entries with the same key (or the same keyless identity and root)
    would let one signature count twice towards a threshold: the policy is unusable."""
    authorities = tuple(authorities)
    if len(authorities) < 2:
        return  # (and a lone key's SubjectPublicKeyInfo need not be encoded)
    seen: dict[object, str] = {}
    for authority in authorities:
        if isinstance(authority, signatures_authorities.KeyAuthority):
            identity: object = ("key", authority.key.spki)
        elif isinstance(authority, signatures_authorities.NotationAuthority):
            identity = ("notation", authority.policy.digest)
        else:
            identity = ("keyless", str(authority.identity), authority.trusted_root.digest)
        if identity in seen:
            raise errors.PolicyError(
                policy,
                f"authorities {seen[identity]} and {authority.name} have "
                f"{_what_is_shared(authority)}: one signer would count twice towards the "
                "threshold",
            )
        seen[identity] = authority.name


def _what_is_shared(authority: signatures_authorities.Authority) -> str:
    """What two authorities that count as one signer have in common, for the message."""
    if isinstance(authority, signatures_authorities.KeyAuthority):
        return f"the same key ({authority.key.fingerprint[:19]}…)"
    if isinstance(authority, signatures_authorities.NotationAuthority):
        return "the same Notation trust stores and trusted identities"
    return f"the same keyless identity ({authority.identity}) and trusted root"


async def _certificates(
    authority: str,
    source: model.CertificateSource,
    field: str,
    read_secret: SecretReader | None,
    read_config_map: ConfigMapReader | None,
) -> str | bytes:
    """The PEM text of a Notation trust store, inline or from a Secret or ConfigMap."""
    if source.pem is not None:
        return source.pem
    if source.secret_ref is not None:
        ref: model.SecretKeyRef | model.ConfigMapKeyRef = source.secret_ref
        where = f"{field}: Secret {ref.namespace}/{ref.name} key {ref.key}"
        reader: Callable[[Any], Awaitable[bytes | str | None]] | None = read_secret
    else:
        assert source.config_map_ref is not None  # parse_policy guarantees one source
        ref = source.config_map_ref
        where = f"{field}: ConfigMap {ref.namespace}/{ref.name} key {ref.key}"
        reader = read_config_map
    if reader is None:
        raise signatures_model.AuthorityError(
            authority, f"{where} cannot be read here (no cluster)"
        )
    try:
        value = await reader(ref)
    except errors.ImagewardError as e:
        raise signatures_model.AuthorityError(authority, f"{where}: {e}") from e
    if value is None:
        raise signatures_model.AuthorityError(authority, f"{where} not found")
    if len(value) > model.MAX_TRUST_STORE_LENGTH:
        raise signatures_model.AuthorityError(
            authority, f"{where} is over {model.MAX_TRUST_STORE_LENGTH} bytes"
        )
    return value


async def _notation_authority(
    name: str,
    spec: model.NotationAuthority,
    read_secret: SecretReader | None,
    read_config_map: ConfigMapReader | None,
) -> signatures_authorities.NotationAuthority:
    from imageward.notation import trust

    stores: dict[str, trust.Store] = {}
    for field, source in (
        ("trustStore", spec.trust_store),
        ("signingAuthorityTrustStore", spec.signing_authority_trust_store),
        ("timestampTrustStore", spec.timestamp_trust_store),
    ):
        if source is not None:
            text = await _certificates(name, source, field, read_secret, read_config_map)
            stores[field] = trust.parse_certificates(text, authority=name, what=field)
    policy = trust.build_policy(
        authority=name,
        ca=stores.get("trustStore", trust.EMPTY),
        signing_authority=stores.get("signingAuthorityTrustStore", trust.EMPTY),
        tsa=stores.get("timestampTrustStore", trust.EMPTY),
        identities=spec.trusted_identities,
        level=spec.verification_level,
        override=dict(spec.override),
        verify_timestamp=spec.verify_timestamp,
    )
    return signatures_authorities.NotationAuthority(name=name, policy=policy)


async def _key_pem(
    authority: str, key: model.KeyAuthority, read_secret: SecretReader | None
) -> bytes | str:
    if key.pem is not None:
        return key.pem
    ref = key.secret_ref
    assert ref is not None  # parse_policy guarantees one of pem / secretRef
    where = f"Secret {ref.namespace}/{ref.name} key {ref.key}"
    if read_secret is None:
        raise signatures_model.AuthorityError(
            authority, f"{where} cannot be read here (no cluster)"
        )
    try:
        value = await read_secret(ref)
    except errors.ImagewardError as e:
        raise signatures_model.AuthorityError(authority, f"{where}: {e}") from e
    if value is None:
        raise signatures_model.AuthorityError(authority, f"{where} not found")
    return value


async def _trusted_root(
    authority: str, spec: model.KeylessAuthority, read_config_map: ConfigMapReader | None
) -> str:
    ref = spec.trusted_root
    if ref is None:
        raise signatures_model.AuthorityError(
            authority, "keyless needs trustedRoot.configMapRef (no network to fetch Sigstore's)"
        )
    where = f"ConfigMap {ref.namespace}/{ref.name} key {ref.key}"
    if read_config_map is None:
        raise signatures_model.AuthorityError(
            authority, f"{where} cannot be read here (no cluster)"
        )
    try:
        value = await read_config_map(ref)
    except errors.ImagewardError as e:
        raise signatures_model.AuthorityError(authority, f"{where}: {e}") from e
    if value is None:
        raise signatures_model.AuthorityError(authority, f"{where} not found")
    return value


def decode_secret_value(secret: Mapping[str, Any] | None, key: str) -> bytes | None:
    if not secret:
        return None
    data = secret.get("data") or {}
    if key not in data:
        return None
    import base64  # here: `imageward check` loads policies without any Secret
    import binascii

    try:
        return base64.b64decode(data[key], validate=True)
    except (binascii.Error, ValueError):
        return None


class PolicyStore:
    """The current policies by name; admission takes an immutable snapshot."""

    def __init__(self, policies: Iterable[LoadedPolicy] = ()) -> None:
        self._policies: dict[str, LoadedPolicy] = {p.name: p for p in policies}
        self._snapshot: tuple[LoadedPolicy, ...] | None = None

    def put(self, policy: LoadedPolicy) -> None:
        self._policies[policy.name] = policy
        self._snapshot = None

    def remove(self, name: str) -> None:
        self._policies.pop(name, None)
        self._snapshot = None

    def get(self, name: str) -> LoadedPolicy | None:
        return self._policies.get(name)

    def snapshot(self) -> tuple[LoadedPolicy, ...]:
        if self._snapshot is None:
            self._snapshot = tuple(sorted(self._policies.values(), key=lambda p: p.name))
        return self._snapshot
