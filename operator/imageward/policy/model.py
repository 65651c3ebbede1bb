"""A parsed ImagePolicy: typed, frozen, validated once.

`parse_policy` accepts the object as the API server returns it (or as a YAML document
for `imageward check`) and raises errors.PolicyError naming the field and the reason.
Unknown spec fields are refused: in the cluster the API server prunes them before we
see them, so this only bites in files, where a typo (`maxCompresedSize`) would otherwise
silently disable a rule.

Nothing is resolved from the cluster: Secrets and ConfigMaps stay references, and PEM
text stays text (the signatures package parses keys).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence

from imageward import constants, errors, records
from imageward.policy import globs, quantities, selectors

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (PEP 781)

if TYPE_CHECKING:
    import datetime  # at run time imported by what needs it: most policies have no times
    from typing import Any, TypeVar

KIND = "ImagePolicy"
DEFAULT_IMAGES = ("**",)
DEFAULT_SECRET_KEY = "cosign.pub"
DEFAULT_TRUSTED_ROOT_KEY = "trusted_root.json"
#: Notation trust stores from a Secret or ConfigMap: cert-manager's name for a CA bundle.
DEFAULT_CERTIFICATES_KEY = "ca.crt"

# Bounds shared with crds/imagepolicies.yaml (maxItems keep CEL cost estimates low).
MAX_PATTERNS = 64
MAX_AUTHORITIES = 16
MAX_PEM_LENGTH = 16384
MAX_TRUST_STORE_LENGTH = 65536  # a Notation trust store: a bundle of a few roots
MAX_TRUSTED_IDENTITIES = 64
MAX_IDENTITY_LENGTH = 1024
VERIFICATION_LEVELS = ("strict", "permissive", "audit")
OVERRIDES = {
    "authenticity": ("enforce", "log"),
    "authenticTimestamp": ("enforce", "log"),
    "expiry": ("enforce", "log"),
    "revocation": ("enforce", "log", "skip"),
}
TIMESTAMP_OPTIONS = ("always", "afterCertExpiry")
MAX_ATTESTATIONS = 16
MAX_CONDITIONS = 16
MAX_IGNORES = 256
MAX_EXPRESSION_LENGTH = 4096
MAX_PREDICATE_TYPE_LENGTH = 512

#: The cosign vulnerability scan predicate (what `trivy image --format cosign-vuln` writes).
VULN_PREDICATE_TYPE = "https://cosign.sigstore.dev/attestation/vuln/v1"
#: Trivy's severities, in order (a finding's `Severity`).
SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN")

# Authority names become the `authority` metric label: keep them label-value shaped.
_AUTHORITY_NAME_RE = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_SUBDOMAIN_RE = re.compile(
    r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
)
# Patterns only some policies need are compiled when first used (re caches them), not
# when `imageward check` imports this module.
_CONFIG_KEY = r"[-._A-Za-z0-9]+"


if TYPE_CHECKING:
    _E = TypeVar("_E", bound=enum.Enum)

_set = object.__setattr__  # how a frozen Record's __init__ sets its fields


class Mode(enum.Enum):
    ENFORCE = "Enforce"
    WARN = "Warn"
    AUDIT = "Audit"


class FailurePolicy(enum.Enum):
    FAIL = "Fail"
    IGNORE = "Ignore"


class Match(records.Record):
    """Which images a policy covers (`spec.match`), and in which namespaces and pods."""

    __slots__ = ("exclude_images", "images", "namespace_selector", "pod_selector")
    images: tuple[globs.ImagePattern, ...]
    exclude_images: tuple[globs.ImagePattern, ...]
    namespace_selector: selectors.LabelSelector
    pod_selector: selectors.LabelSelector

    def __init__(
        self,
        images: tuple[globs.ImagePattern, ...],
        exclude_images: tuple[globs.ImagePattern, ...] = (),
        namespace_selector: selectors.LabelSelector = selectors.EMPTY,
        pod_selector: selectors.LabelSelector = selectors.EMPTY,
    ) -> None:
        _set(self, "images", images)
        _set(self, "exclude_images", exclude_images)
        _set(self, "namespace_selector", namespace_selector)
        _set(self, "pod_selector", pod_selector)


class SecretKeyRef(records.Record):
    """A key of a Secret, read when the policy is loaded."""

    __slots__ = ("key", "name", "namespace")
    namespace: str
    name: str
    key: str

    def __init__(
        self,
        namespace: str,
        name: str,
        key: str = DEFAULT_SECRET_KEY,
    ) -> None:
        _set(self, "namespace", namespace)
        _set(self, "name", name)
        _set(self, "key", key)


class ConfigMapKeyRef(records.Record):
    """A key of a ConfigMap, read when the policy is loaded."""

    __slots__ = ("key", "name", "namespace")
    namespace: str
    name: str
    key: str

    def __init__(
        self,
        namespace: str,
        name: str,
        key: str = DEFAULT_TRUSTED_ROOT_KEY,
    ) -> None:
        _set(self, "namespace", namespace)
        _set(self, "name", name)
        _set(self, "key", key)


class KeyAuthority(records.Record):
    """Exactly one of `pem` (raw text, unparsed) and `secret_ref` is set."""

    __slots__ = ("pem", "secret_ref")
    pem: str | None
    secret_ref: SecretKeyRef | None

    def __init__(
        self,
        pem: str | None = None,
        secret_ref: SecretKeyRef | None = None,
    ) -> None:
        _set(self, "pem", pem)
        _set(self, "secret_ref", secret_ref)


class KeylessAuthority(records.Record):
    """Fulcio identity; exactly one of each exact/regexp pair is set.

    The regexps were compiled once with Python's `re` to validate them; verifiers should
    apply them with `re.fullmatch` semantics or rely on `^...$` in the text, because an
    unanchored search lets `https://evil.example/?https://github.com/acme/` through.
    """

    __slots__ = ("issuer", "issuer_regexp", "subject", "subject_regexp", "trusted_root")
    issuer: str | None
    issuer_regexp: str | None
    subject: str | None
    subject_regexp: str | None
    trusted_root: ConfigMapKeyRef | None

    def __init__(
        self,
        issuer: str | None = None,
        issuer_regexp: str | None = None,
        subject: str | None = None,
        subject_regexp: str | None = None,
        trusted_root: ConfigMapKeyRef | None = None,
    ) -> None:
        _set(self, "issuer", issuer)
        _set(self, "issuer_regexp", issuer_regexp)
        _set(self, "subject", subject)
        _set(self, "subject_regexp", subject_regexp)
        _set(self, "trusted_root", trusted_root)


class CertificateSource(records.Record):
    """PEM certificates: exactly one of `pem` (raw text), `secret_ref`, `config_map_ref`."""

    __slots__ = ("config_map_ref", "pem", "secret_ref")
    pem: str | None
    secret_ref: SecretKeyRef | None
    config_map_ref: ConfigMapKeyRef | None

    def __init__(
        self,
        pem: str | None = None,
        secret_ref: SecretKeyRef | None = None,
        config_map_ref: ConfigMapKeyRef | None = None,
    ) -> None:
        _set(self, "pem", pem)
        _set(self, "secret_ref", secret_ref)
        _set(self, "config_map_ref", config_map_ref)


class NotationAuthority(records.Record):
    """A Notary Project trust-policy statement (see `imageward.notation.trust`).

    At least one of `trust_store` (CA roots, signing scheme notary.x509) and
    `signing_authority_trust_store` (notary.x509.signingAuthority) is set.
    """

    __slots__ = (
        "override",
        "signing_authority_trust_store",
        "timestamp_trust_store",
        "trust_store",
        "trusted_identities",
        "verification_level",
        "verify_timestamp",
    )
    trusted_identities: tuple[str, ...]
    trust_store: CertificateSource | None
    signing_authority_trust_store: CertificateSource | None
    timestamp_trust_store: CertificateSource | None
    verification_level: str
    override: tuple[tuple[str, str], ...]
    verify_timestamp: str

    def __init__(
        self,
        trusted_identities: tuple[str, ...],
        trust_store: CertificateSource | None = None,
        signing_authority_trust_store: CertificateSource | None = None,
        timestamp_trust_store: CertificateSource | None = None,
        verification_level: str = "strict",
        override: tuple[tuple[str, str], ...] = (),
        verify_timestamp: str = "always",
    ) -> None:
        _set(self, "trusted_identities", trusted_identities)
        _set(self, "trust_store", trust_store)
        _set(self, "signing_authority_trust_store", signing_authority_trust_store)
        _set(self, "timestamp_trust_store", timestamp_trust_store)
        _set(self, "verification_level", verification_level)
        _set(self, "override", override)
        _set(self, "verify_timestamp", verify_timestamp)


class Authority(records.Record):
    """Exactly one of `key`, `keyless` and `notation` is set."""

    __slots__ = ("key", "keyless", "name", "notation")
    name: str
    key: KeyAuthority | None
    keyless: KeylessAuthority | None
    notation: NotationAuthority | None

    def __init__(
        self,
        name: str,
        key: KeyAuthority | None = None,
        keyless: KeylessAuthority | None = None,
        notation: NotationAuthority | None = None,
    ) -> None:
        _set(self, "name", name)
        _set(self, "key", key)
        _set(self, "keyless", keyless)
        _set(self, "notation", notation)


class Signatures(records.Record):
    """`rules.signatures`: `threshold` distinct signers among `authorities`."""

    __slots__ = ("authorities", "threshold")
    authorities: tuple[Authority, ...]
    threshold: int

    def __init__(
        self,
        authorities: tuple[Authority, ...],
        threshold: int = 1,
    ) -> None:
        _set(self, "authorities", authorities)
        _set(self, "threshold", threshold)


class Duration(records.Record):
    """A Go duration as the policy wrote it ("168h", "1h30m"), and its length."""

    __slots__ = ("seconds", "text")
    text: str
    seconds: float

    def __init__(
        self,
        text: str,
        seconds: float,
    ) -> None:
        _set(self, "text", text)
        _set(self, "seconds", seconds)

    @property
    def delta(self) -> datetime.timedelta:
        import datetime

        return datetime.timedelta(seconds=self.seconds)


class Ignore(records.Record):
    """A finding a vulnerability rule tolerates, until `until` (forever when None)."""

    __slots__ = ("id", "reason", "until")
    id: str
    until: datetime.datetime | None
    reason: str

    def __init__(
        self,
        id: str,
        until: datetime.datetime | None = None,
        reason: str = "",
    ) -> None:
        _set(self, "id", id)
        _set(self, "until", until)
        _set(self, "reason", reason)


class Vulnerabilities(records.Record):
    """Built-in rules over the cosign vulnerability predicate (Trivy's report layout)."""

    __slots__ = ("forbidden_severities", "ignore", "max_scan_age")
    forbidden_severities: tuple[str, ...]
    max_scan_age: Duration | None
    ignore: tuple[Ignore, ...]

    def __init__(
        self,
        forbidden_severities: tuple[str, ...] = (),
        max_scan_age: Duration | None = None,
        ignore: tuple[Ignore, ...] = (),
    ) -> None:
        _set(self, "forbidden_severities", forbidden_severities)
        _set(self, "max_scan_age", max_scan_age)
        _set(self, "ignore", ignore)


class Condition(records.Record):
    """A CEL expression over `statement`, `predicate` and `now` (text; compiled at load)."""

    __slots__ = ("expression", "message")
    expression: str
    message: str

    def __init__(
        self,
        expression: str,
        message: str = "",
    ) -> None:
        _set(self, "expression", expression)
        _set(self, "message", message)


class Attestation(records.Record):
    """One `rules.attestations[]` entry: a signed in-toto statement of `predicate_type`
    the image must carry (or, when not `required`, that is checked when present)."""

    __slots__ = (
        "authorities",
        "conditions",
        "max_age",
        "name",
        "predicate_type",
        "required",
        "threshold",
        "vulnerabilities",
    )
    name: str
    predicate_type: str
    authorities: tuple[Authority, ...]
    required: bool
    threshold: int
    vulnerabilities: Vulnerabilities | None
    max_age: Duration | None
    conditions: tuple[Condition, ...]

    def __init__(
        self,
        name: str,
        predicate_type: str,
        authorities: tuple[Authority, ...],
        required: bool = True,
        threshold: int = 1,
        vulnerabilities: Vulnerabilities | None = None,
        max_age: Duration | None = None,
        conditions: tuple[Condition, ...] = (),
    ) -> None:
        _set(self, "name", name)
        _set(self, "predicate_type", predicate_type)
        _set(self, "authorities", authorities)
        _set(self, "required", required)
        _set(self, "threshold", threshold)
        _set(self, "vulnerabilities", vulnerabilities)
        _set(self, "max_age", max_age)
        _set(self, "conditions", conditions)


class Rules(records.Record):
    """`spec.rules`: each rule left unset (None, empty or False) is not checked."""

    __slots__ = (
        "allowed_registries",
        "attestations",
        "forbid_root_user",
        "forbidden_tags",
        "max_compressed_size",
        "max_layer_size",
        "max_layers",
        "require_digest",
        "require_numeric_user",
        "signatures",
    )
    allowed_registries: tuple[globs.HostPattern, ...] | None
    """None: any registry. Never empty (an empty list is refused as a mistake)."""

    forbidden_tags: tuple[globs.TagPattern, ...]
    require_digest: bool
    max_compressed_size: quantities.Quantity | None
    max_layers: int | None
    max_layer_size: quantities.Quantity | None
    forbid_root_user: bool
    require_numeric_user: bool
    """With forbidRootUser: a named user (not a uid) is refused too, as kubelet's
    `runAsNonRoot` does: a name cannot be shown to be non-root without the image's
    /etc/passwd (a user "app" may well be uid 0 there)."""

    signatures: Signatures | None
    attestations: tuple[Attestation, ...]

    def __init__(
        self,
        allowed_registries: tuple[globs.HostPattern, ...] | None = None,
        forbidden_tags: tuple[globs.TagPattern, ...] = (),
        require_digest: bool = False,
        max_compressed_size: quantities.Quantity | None = None,
        max_layers: int | None = None,
        max_layer_size: quantities.Quantity | None = None,
        forbid_root_user: bool = False,
        require_numeric_user: bool = False,
        signatures: Signatures | None = None,
        attestations: tuple[Attestation, ...] = (),
    ) -> None:
        _set(self, "allowed_registries", allowed_registries)
        _set(self, "forbidden_tags", forbidden_tags)
        _set(self, "require_digest", require_digest)
        _set(self, "max_compressed_size", max_compressed_size)
        _set(self, "max_layers", max_layers)
        _set(self, "max_layer_size", max_layer_size)
        _set(self, "forbid_root_user", forbid_root_user)
        _set(self, "require_numeric_user", require_numeric_user)
        _set(self, "signatures", signatures)
        _set(self, "attestations", attestations)


_NO_RULES = Rules()


class ImagePolicy(records.Record):
    """A whole ImagePolicy, validated: its name, generation and `spec`."""

    __slots__ = (
        "allow_exceptions",
        "failure_policy",
        "generation",
        "match",
        "mode",
        "name",
        "pin_digest",
        "rules",
    )
    name: str
    generation: int
    mode: Mode
    failure_policy: FailurePolicy
    match: Match
    rules: Rules
    pin_digest: bool
    allow_exceptions: bool
    """Whether ImagePolicyExceptions may waive this policy's rules (in their namespace)."""

    def __init__(
        self,
        name: str,
        generation: int,
        mode: Mode = Mode.ENFORCE,
        failure_policy: FailurePolicy = FailurePolicy.FAIL,
        match: Match = records.FACTORY,
        rules: Rules = _NO_RULES,
        pin_digest: bool = False,
        allow_exceptions: bool = True,
    ) -> None:
        if match is records.FACTORY:  # a new Match for each policy, as a default_factory
            match = Match(images=tuple(map(globs.parse_image_pattern, DEFAULT_IMAGES)))
        _set(self, "name", name)
        _set(self, "generation", generation)
        _set(self, "mode", mode)
        _set(self, "failure_policy", failure_policy)
        _set(self, "match", match)
        _set(self, "rules", rules)
        _set(self, "pin_digest", pin_digest)
        _set(self, "allow_exceptions", allow_exceptions)


class _Invalid(Exception):
    """Internal: a field error, turned into PolicyError with the policy name."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check_fields(obj: Mapping[str, Any], path: str, allowed: set[str]) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise _Invalid(
            _join(path, unknown[0]), f"unknown field (known: {', '.join(sorted(allowed))})"
        )


def _mapping(obj: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _Invalid(_join(path, key), "must be an object")
    return value


def _list(obj: Mapping[str, Any], key: str, path: str, *, max_items: int) -> list[Any] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise _Invalid(_join(path, key), "must be a list")
    if len(value) > max_items:
        raise _Invalid(_join(path, key), f"at most {max_items} entries")
    return value


def _string(obj: Mapping[str, Any], key: str, path: str, *, required: bool = False) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise _Invalid(_join(path, key), "required")
        return None
    if not isinstance(value, str) or not value:
        raise _Invalid(_join(path, key), "must be a non-empty string")
    return value


def _bool(obj: Mapping[str, Any], key: str, path: str) -> bool:
    value = obj.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _Invalid(_join(path, key), f"must be true or false, not {value!r}")
    return value


def _positive_int(obj: Mapping[str, Any], key: str, path: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(_join(path, key), f"must be an integer, not {value!r}")
    if value < 1:
        raise _Invalid(_join(path, key), "must be at least 1")
    return value


def _enum(obj: Mapping[str, Any], key: str, path: str, cls: type[_E], default: _E) -> _E:
    value = obj.get(key)
    if value is None:
        return default
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(str(member.value) for member in cls)
        raise _Invalid(_join(path, key), f"{value!r} is not one of {choices}") from None


def _size(obj: Mapping[str, Any], key: str, path: str) -> quantities.Quantity | None:
    value = obj.get(key)
    if value is None:
        return None
    try:
        quantity = quantities.parse_quantity(value)
    except quantities.QuantityError as error:
        raise _Invalid(_join(path, key), f"{value!r} {error.reason}") from error
    if quantity.bytes == 0:
        raise _Invalid(_join(path, key), "must be greater than 0")
    return quantity


def _patterns(values: Sequence[Any], path: str) -> tuple[globs.ImagePattern, ...]:
    patterns: list[globs.ImagePattern] = []
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise _Invalid(f"{path}[{index}]", "must be a string")
        try:
            patterns.append(globs.parse_image_pattern(value))
        except globs.PatternError as error:
            raise _Invalid(f"{path}[{index}]", f"{value!r}: {error.reason}") from error
    return tuple(patterns)


def _selector(obj: Mapping[str, Any], key: str, path: str) -> selectors.LabelSelector:
    value = obj.get(key)
    try:
        return selectors.parse_label_selector(value, path=_join(path, key))
    except selectors.SelectorError as error:
        raise _Invalid(error.path, error.reason) from error


def _parse_match(obj: Mapping[str, Any], path: str) -> Match:
    _check_fields(obj, path, {"images", "excludeImages", "namespaceSelector", "podSelector"})
    images = _list(obj, "images", path, max_items=MAX_PATTERNS)
    if images is None:
        images = list(DEFAULT_IMAGES)
    elif not images:
        raise _Invalid(f"{path}.images", "empty: the policy would match nothing (omit for all)")
    excluded = _list(obj, "excludeImages", path, max_items=MAX_PATTERNS) or []
    return Match(
        images=_patterns(images, f"{path}.images"),
        exclude_images=_patterns(excluded, f"{path}.excludeImages"),
        namespace_selector=_selector(obj, "namespaceSelector", path),
        pod_selector=_selector(obj, "podSelector", path),
    )


def _dns_name(obj: Mapping[str, Any], key: str, path: str) -> str:
    value = _string(obj, key, path, required=True)
    assert value is not None  # required=True
    if len(value) > 253 or not _DNS_SUBDOMAIN_RE.fullmatch(value):
        raise _Invalid(_join(path, key), f"{value!r} is not a valid Kubernetes object name")
    return value


def _config_key(obj: Mapping[str, Any], key: str, path: str, default: str) -> str:
    value = _string(obj, key, path) or default
    if len(value) > 253 or not re.fullmatch(_CONFIG_KEY, value):
        raise _Invalid(_join(path, key), f"{value!r} is not a valid Secret/ConfigMap key")
    return value


def _parse_key(obj: Mapping[str, Any], path: str) -> KeyAuthority:
    _check_fields(obj, path, {"pem", "secretRef"})
    pem = _string(obj, "pem", path)
    has_ref = obj.get("secretRef") is not None
    if (pem is None) == (not has_ref):
        raise _Invalid(path, "set exactly one of pem and secretRef")
    if pem is not None:
        if len(pem) > MAX_PEM_LENGTH:
            raise _Invalid(f"{path}.pem", f"longer than {MAX_PEM_LENGTH} characters")
        # Only a shape check: the signatures package parses the key and reports why a
        # PEM block is unusable; this catches a pasted file name or a truncated value.
        if "-----BEGIN " not in pem or "-----END " not in pem:
            raise _Invalid(f"{path}.pem", "is not PEM text (-----BEGIN PUBLIC KEY----- ...)")
        return KeyAuthority(pem=pem)
    ref_path = f"{path}.secretRef"
    ref = _mapping(obj, "secretRef", path)
    _check_fields(ref, ref_path, {"namespace", "name", "key"})
    return KeyAuthority(
        secret_ref=SecretKeyRef(
            namespace=_dns_name(ref, "namespace", ref_path),
            name=_dns_name(ref, "name", ref_path),
            key=_config_key(ref, "key", ref_path, DEFAULT_SECRET_KEY),
        )
    )


def _regexp(obj: Mapping[str, Any], key: str, path: str) -> str | None:
    value = _string(obj, key, path)
    if value is not None:
        try:
            re.compile(value)
        except re.error as error:
            raise _Invalid(_join(path, key), f"invalid regular expression: {error}") from error
    return value


def _parse_keyless(obj: Mapping[str, Any], path: str) -> KeylessAuthority:
    _check_fields(obj, path, {"issuer", "issuerRegExp", "subject", "subjectRegExp", "trustedRoot"})
    issuer = _string(obj, "issuer", path)
    issuer_regexp = _regexp(obj, "issuerRegExp", path)
    subject = _string(obj, "subject", path)
    subject_regexp = _regexp(obj, "subjectRegExp", path)
    # Without an identity any certificate Fulcio ever issued would verify: refuse.
    if (issuer is None) == (issuer_regexp is None):
        raise _Invalid(path, "set exactly one of issuer and issuerRegExp")
    if (subject is None) == (subject_regexp is None):
        raise _Invalid(path, "set exactly one of subject and subjectRegExp")
    trusted_root: ConfigMapKeyRef | None = None
    if obj.get("trustedRoot") is not None:
        root_path = f"{path}.trustedRoot"
        root = _mapping(obj, "trustedRoot", path)
        _check_fields(root, root_path, {"configMapRef"})
        ref_path = f"{root_path}.configMapRef"
        ref = _mapping(root, "configMapRef", root_path)
        if not ref:
            raise _Invalid(ref_path, "required")
        _check_fields(ref, ref_path, {"namespace", "name", "key"})
        trusted_root = ConfigMapKeyRef(
            namespace=_dns_name(ref, "namespace", ref_path),
            name=_dns_name(ref, "name", ref_path),
            key=_config_key(ref, "key", ref_path, DEFAULT_TRUSTED_ROOT_KEY),
        )
    return KeylessAuthority(
        issuer=issuer,
        issuer_regexp=issuer_regexp,
        subject=subject,
        subject_regexp=subject_regexp,
        trusted_root=trusted_root,
    )


def _parse_certificate_source(
    obj: Mapping[str, Any], key: str, path: str
) -> CertificateSource | None:
    if obj.get(key) is None:
        return None
    where = _join(path, key)
    source = _mapping(obj, key, path)
    _check_fields(source, where, {"pem", "secretRef", "configMapRef"})
    given = [name for name in ("pem", "secretRef", "configMapRef") if source.get(name) is not None]
    if len(given) != 1:
        raise _Invalid(where, "set exactly one of pem, secretRef and configMapRef")
    if given == ["pem"]:
        pem = _string(source, "pem", where)
        assert pem is not None
        if len(pem) > MAX_TRUST_STORE_LENGTH:
            raise _Invalid(f"{where}.pem", f"longer than {MAX_TRUST_STORE_LENGTH} characters")
        if "-----BEGIN CERTIFICATE-----" not in pem:
            raise _Invalid(
                f"{where}.pem", "is not PEM certificates (-----BEGIN CERTIFICATE----- ...)"
            )
        return CertificateSource(pem=pem)
    (name,) = given
    ref_path = f"{where}.{name}"
    ref = _mapping(source, name, where)
    _check_fields(ref, ref_path, {"namespace", "name", "key"})
    namespace = _dns_name(ref, "namespace", ref_path)
    object_name = _dns_name(ref, "name", ref_path)
    data_key = _config_key(ref, "key", ref_path, DEFAULT_CERTIFICATES_KEY)
    if name == "secretRef":
        return CertificateSource(secret_ref=SecretKeyRef(namespace, object_name, data_key))
    return CertificateSource(config_map_ref=ConfigMapKeyRef(namespace, object_name, data_key))


def _parse_notation(obj: Mapping[str, Any], path: str) -> NotationAuthority:
    _check_fields(
        obj,
        path,
        {
            "trustStore",
            "signingAuthorityTrustStore",
            "timestampTrustStore",
            "trustedIdentities",
            "verificationLevel",
            "override",
            "verifyTimestamp",
        },
    )
    trust_store = _parse_certificate_source(obj, "trustStore", path)
    signing_authority = _parse_certificate_source(obj, "signingAuthorityTrustStore", path)
    if trust_store is None and signing_authority is None:
        raise _Invalid(path, "set trustStore (CA roots) or signingAuthorityTrustStore, or both")
    identities = _list(obj, "trustedIdentities", path, max_items=MAX_TRUSTED_IDENTITIES)
    if not identities:
        raise _Invalid(
            f"{path}.trustedIdentities",
            'required: x509.subject identities ("x509.subject: C=US, ST=WA, O=Acme") or ["*"]',
        )
    for index, identity in enumerate(identities):
        if not isinstance(identity, str) or not identity or len(identity) > MAX_IDENTITY_LENGTH:
            raise _Invalid(
                f"{path}.trustedIdentities[{index}]",
                f"must be a non-empty string of at most {MAX_IDENTITY_LENGTH} characters",
            )
    level = _string(obj, "verificationLevel", path) or "strict"
    if level not in VERIFICATION_LEVELS:
        raise _Invalid(
            f"{path}.verificationLevel", f"{level!r} is not one of {', '.join(VERIFICATION_LEVELS)}"
        )
    override: list[tuple[str, str]] = []
    raw_override = _mapping(obj, "override", path)
    for key, value in raw_override.items():
        allowed = OVERRIDES.get(key)
        if allowed is None:
            raise _Invalid(
                f"{path}.override.{key}", f"unknown validation (known: {', '.join(OVERRIDES)})"
            )
        if value not in allowed:
            raise _Invalid(
                f"{path}.override.{key}", f"{value!r} is not one of {', '.join(allowed)}"
            )
        override.append((key, value))
    verify_timestamp = _string(obj, "verifyTimestamp", path) or "always"
    if verify_timestamp not in TIMESTAMP_OPTIONS:
        raise _Invalid(
            f"{path}.verifyTimestamp", f"{verify_timestamp!r} is not one of always, afterCertExpiry"
        )
    return NotationAuthority(
        trusted_identities=tuple(identities),
        trust_store=trust_store,
        signing_authority_trust_store=signing_authority,
        timestamp_trust_store=_parse_certificate_source(obj, "timestampTrustStore", path),
        verification_level=level,
        override=tuple(sorted(override)),
        verify_timestamp=verify_timestamp,
    )


def _parse_authority(obj: object, path: str, *, notation: bool = True) -> Authority:
    if not isinstance(obj, Mapping):
        raise _Invalid(path, "must be an object with name and key, keyless or notation")
    _check_fields(obj, path, {"name", "key", "keyless", "notation"})
    name = _string(obj, "name", path, required=True)
    assert name is not None  # required=True
    if len(name) > 63 or not _AUTHORITY_NAME_RE.fullmatch(name):
        raise _Invalid(
            f"{path}.name",
            f"{name!r}: at most 63 alphanumerics, '-', '_' or '.', "
            "starting and ending with an alphanumeric",
        )
    has_key = obj.get("key") is not None
    has_keyless = obj.get("keyless") is not None
    has_notation = obj.get("notation") is not None
    if has_key + has_keyless + has_notation != 1:
        raise _Invalid(path, "set exactly one of key, keyless and notation")
    if has_notation:
        if not notation:
            raise _Invalid(
                f"{path}.notation",
                "Notation signs artifacts, not in-toto attestations: an attestation is a "
                "DSSE envelope only a key or keyless authority can verify",
            )
        return Authority(
            name=name, notation=_parse_notation(_mapping(obj, "notation", path), f"{path}.notation")
        )
    if has_key:
        return Authority(name=name, key=_parse_key(_mapping(obj, "key", path), f"{path}.key"))
    return Authority(
        name=name, keyless=_parse_keyless(_mapping(obj, "keyless", path), f"{path}.keyless")
    )


def _parse_authorities(
    obj: Mapping[str, Any], path: str, *, notation: bool = True
) -> tuple[Authority, ...]:
    raw = _list(obj, "authorities", path, max_items=MAX_AUTHORITIES)
    if not raw:
        raise _Invalid(f"{path}.authorities", "at least one authority is required")
    authorities = tuple(
        _parse_authority(item, f"{path}.authorities[{index}]", notation=notation)
        for index, item in enumerate(raw)
    )
    seen: set[str] = set()
    for index, authority in enumerate(authorities):
        if authority.name in seen:
            raise _Invalid(
                f"{path}.authorities[{index}].name", f"duplicate authority {authority.name!r}"
            )
        seen.add(authority.name)
    return authorities


def _threshold(obj: Mapping[str, Any], path: str, authorities: Sequence[Authority]) -> int:
    threshold = _positive_int(obj, "threshold", path) or 1
    if threshold > len(authorities):
        raise _Invalid(
            f"{path}.threshold",
            f"{threshold} is more than the {len(authorities)} authorities listed: "
            "no image could ever pass",
        )
    return threshold


def _parse_signatures(obj: Mapping[str, Any], path: str) -> Signatures:
    _check_fields(obj, path, {"threshold", "authorities"})
    authorities = _parse_authorities(obj, path)
    return Signatures(authorities=authorities, threshold=_threshold(obj, path, authorities))


_DURATION = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ns|us|µs|ms|s|m|h)"
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> float:
    """Seconds in a Go duration ("168h", "1h30m", "90s"), as `time.ParseDuration` reads
    it (without a sign: an age limit is positive). Raises ValueError."""
    if not text or re.sub(_DURATION, "", text) != "":
        raise ValueError(
            f"{text!r} is not a duration such as 168h, 30m or 1h30m (no days: 7d is 168h)"
        )
    total = 0.0
    for part in re.findall(_DURATION, text):
        number = re.match(r"[0-9.]+", part)
        assert number is not None
        total += float(number.group()) * _DURATION_UNITS[part[number.end() :]]
    return total


def _duration(obj: Mapping[str, Any], key: str, path: str) -> Duration | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Invalid(_join(path, key), f"must be a duration string such as 168h, not {value!r}")
    try:
        seconds = parse_duration(value)
    except ValueError as error:
        raise _Invalid(_join(path, key), str(error)) from None
    if seconds <= 0:
        raise _Invalid(_join(path, key), "must be greater than 0")
    return Duration(value, seconds)


def parse_time(value: object) -> datetime.datetime:
    """An RFC 3339 time ("2027-03-01T00:00:00Z", or a date "2027-03-01", midnight UTC).

    YAML gives a date or datetime object for an unquoted value; those are accepted too.
    Raises ValueError."""
    import datetime

    if isinstance(value, datetime.datetime):
        parsed = value
    elif isinstance(value, datetime.date):
        parsed = datetime.datetime(value.year, value.month, value.day)
    elif isinstance(value, str) and value:
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        # Nanoseconds (Go writes them) are more than Python parses: keep microseconds.
        text = re.sub(r"(\.[0-9]{6})[0-9]+", r"\1", text)
        parsed = datetime.datetime.fromisoformat(text)
    else:
        raise ValueError(f"{value!r} is not a time")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def _parse_ignore(obj: object, path: str) -> Ignore:
    if not isinstance(obj, Mapping):
        raise _Invalid(path, "must be an object with id, until and reason")
    _check_fields(obj, path, {"id", "until", "reason"})
    finding = _string(obj, "id", path, required=True)
    assert finding is not None
    until: datetime.datetime | None = None
    if obj.get("until") is not None:
        try:
            until = parse_time(obj["until"])
        except ValueError:
            raise _Invalid(
                f"{path}.until", f"{obj['until']!r} is not an RFC 3339 time (2027-03-01T00:00:00Z)"
            ) from None
    reason = obj.get("reason") or ""
    if not isinstance(reason, str):
        raise _Invalid(f"{path}.reason", "must be a string")
    return Ignore(id=finding, until=until, reason=reason)


def _parse_vulnerabilities(obj: Mapping[str, Any], path: str) -> Vulnerabilities:
    _check_fields(obj, path, {"forbiddenSeverities", "maxScanAge", "ignore"})
    severities: list[str] = []
    for index, value in enumerate(
        _list(obj, "forbiddenSeverities", path, max_items=len(SEVERITIES)) or []
    ):
        if not isinstance(value, str) or value.upper() not in SEVERITIES:
            raise _Invalid(
                f"{path}.forbiddenSeverities[{index}]",
                f"{value!r} is not one of {', '.join(SEVERITIES)}",
            )
        if value.upper() not in severities:
            severities.append(value.upper())
    ignores = tuple(
        _parse_ignore(item, f"{path}.ignore[{index}]")
        for index, item in enumerate(_list(obj, "ignore", path, max_items=MAX_IGNORES) or [])
    )
    rule = Vulnerabilities(
        forbidden_severities=tuple(severities),
        max_scan_age=_duration(obj, "maxScanAge", path),
        ignore=ignores,
    )
    if not rule.forbidden_severities and rule.max_scan_age is None:
        raise _Invalid(path, "set forbiddenSeverities or maxScanAge (or leave vulnerabilities out)")
    return rule


def _parse_condition(obj: object, path: str) -> Condition:
    if not isinstance(obj, Mapping):
        raise _Invalid(path, "must be an object with expression and message")
    _check_fields(obj, path, {"expression", "message"})
    expression = _string(obj, "expression", path, required=True)
    assert expression is not None
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise _Invalid(f"{path}.expression", f"longer than {MAX_EXPRESSION_LENGTH} characters")
    message = obj.get("message") or ""
    if not isinstance(message, str):
        raise _Invalid(f"{path}.message", "must be a string")
    return Condition(expression=expression, message=message)


def _parse_attestation(obj: object, path: str) -> Attestation:
    if not isinstance(obj, Mapping):
        raise _Invalid(path, "must be an object with name, predicateType and authorities")
    _check_fields(
        obj,
        path,
        {
            "name",
            "predicateType",
            "required",
            "threshold",
            "authorities",
            "vulnerabilities",
            "maxAge",
            "conditions",
        },
    )
    name = _string(obj, "name", path, required=True)
    assert name is not None
    if len(name) > 63 or not _AUTHORITY_NAME_RE.fullmatch(name):
        raise _Invalid(
            f"{path}.name",
            f"{name!r}: at most 63 alphanumerics, '-', '_' or '.', "
            "starting and ending with an alphanumeric",
        )
    predicate_type = _string(obj, "predicateType", path, required=True)
    assert predicate_type is not None
    if len(predicate_type) > MAX_PREDICATE_TYPE_LENGTH:
        raise _Invalid(f"{path}.predicateType", f"longer than {MAX_PREDICATE_TYPE_LENGTH}")
    authorities = _parse_authorities(obj, path, notation=False)
    required = obj.get("required", True)
    if not isinstance(required, bool):
        raise _Invalid(f"{path}.required", f"must be true or false, not {required!r}")
    vulnerabilities: Vulnerabilities | None = None
    if obj.get("vulnerabilities") is not None:
        if predicate_type != VULN_PREDICATE_TYPE:
            raise _Invalid(
                f"{path}.vulnerabilities",
                f"reads the cosign vulnerability predicate: predicateType must be "
                f"{VULN_PREDICATE_TYPE}, not {predicate_type}",
            )
        vulnerabilities = _parse_vulnerabilities(
            _mapping(obj, "vulnerabilities", path), f"{path}.vulnerabilities"
        )
    conditions = tuple(
        _parse_condition(item, f"{path}.conditions[{index}]")
        for index, item in enumerate(_list(obj, "conditions", path, max_items=MAX_CONDITIONS) or [])
    )
    return Attestation(
        name=name,
        predicate_type=predicate_type,
        authorities=authorities,
        required=required,
        threshold=_threshold(obj, path, authorities),
        vulnerabilities=vulnerabilities,
        max_age=_duration(obj, "maxAge", path),
        conditions=conditions,
    )


def _parse_attestations(obj: Mapping[str, Any], path: str) -> tuple[Attestation, ...]:
    raw = _list(obj, constants.RULE_ATTESTATIONS, path, max_items=MAX_ATTESTATIONS)
    if raw is None:
        return ()
    where = f"{path}.{constants.RULE_ATTESTATIONS}"
    if not raw:
        raise _Invalid(where, "empty (leave attestations out)")
    entries = tuple(_parse_attestation(item, f"{where}[{i}]") for i, item in enumerate(raw))
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        if entry.name in seen:
            raise _Invalid(f"{where}[{index}].name", f"duplicate attestation {entry.name!r}")
        seen.add(entry.name)
    return entries


def _parse_registries(obj: Mapping[str, Any], path: str) -> tuple[globs.HostPattern, ...] | None:
    raw = _list(obj, "allowedRegistries", path, max_items=MAX_PATTERNS)
    if raw is None:
        return None
    if not raw:
        raise _Invalid(
            f"{path}.allowedRegistries", "empty: no image could pass (omit to allow any registry)"
        )
    hosts: list[globs.HostPattern] = []
    for index, value in enumerate(raw):
        if not isinstance(value, str):
            raise _Invalid(f"{path}.allowedRegistries[{index}]", "must be a string")
        try:
            hosts.append(globs.parse_host_pattern(value))
        except globs.PatternError as error:
            raise _Invalid(
                f"{path}.allowedRegistries[{index}]", f"{value!r}: {error.reason}"
            ) from error
    return tuple(hosts)


def _parse_tags(obj: Mapping[str, Any], path: str) -> tuple[globs.TagPattern, ...]:
    raw = _list(obj, "forbiddenTags", path, max_items=MAX_PATTERNS) or []
    tags: list[globs.TagPattern] = []
    for index, value in enumerate(raw):
        if not isinstance(value, str):
            raise _Invalid(f"{path}.forbiddenTags[{index}]", "must be a string")
        try:
            tags.append(globs.parse_tag_pattern(value))
        except globs.PatternError as error:
            raise _Invalid(
                f"{path}.forbiddenTags[{index}]", f"{value!r}: {error.reason}"
            ) from error
    return tuple(tags)


def _parse_rules(obj: Mapping[str, Any], path: str) -> Rules:
    _check_fields(
        obj,
        path,
        {
            constants.RULE_ALLOWED_REGISTRIES,
            constants.RULE_FORBIDDEN_TAGS,
            constants.RULE_REQUIRE_DIGEST,
            constants.RULE_MAX_COMPRESSED_SIZE,
            constants.RULE_MAX_LAYERS,
            constants.RULE_MAX_LAYER_SIZE,
            constants.RULE_FORBID_ROOT_USER,
            constants.FIELD_REQUIRE_NUMERIC_USER,
            constants.RULE_SIGNATURES,
            constants.RULE_ATTESTATIONS,
        },
    )
    require_numeric_user = _bool(obj, constants.FIELD_REQUIRE_NUMERIC_USER, path)
    signatures: Signatures | None = None
    if obj.get(constants.RULE_SIGNATURES) is not None:
        signatures = _parse_signatures(
            _mapping(obj, constants.RULE_SIGNATURES, path), f"{path}.{constants.RULE_SIGNATURES}"
        )
    return Rules(
        allowed_registries=_parse_registries(obj, path),
        forbidden_tags=_parse_tags(obj, path),
        require_digest=_bool(obj, constants.RULE_REQUIRE_DIGEST, path),
        max_compressed_size=_size(obj, constants.RULE_MAX_COMPRESSED_SIZE, path),
        max_layers=_positive_int(obj, constants.RULE_MAX_LAYERS, path),
        max_layer_size=_size(obj, constants.RULE_MAX_LAYER_SIZE, path),
        # requireNumericUser implies the user check it refines.
        forbid_root_user=_bool(obj, constants.RULE_FORBID_ROOT_USER, path) or require_numeric_user,
        require_numeric_user=require_numeric_user,
        signatures=signatures,
        attestations=_parse_attestations(obj, path),
    )


def _policy_name(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return name if isinstance(name, str) and name else "<unnamed>"


def _parse_header(obj: Mapping[str, Any]) -> tuple[str, int]:
    kind = obj.get("kind")
    if kind is not None and kind != KIND:
        raise _Invalid("kind", f"{kind!r} is not {KIND}")
    api_version = obj.get("apiVersion")
    if api_version is not None and api_version != constants.API_VERSION:
        raise _Invalid("apiVersion", f"{api_version!r} is not {constants.API_VERSION}")
    metadata = _mapping(obj, "metadata", "")
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise _Invalid("metadata.name", "required")
    if len(name) > 253 or not _DNS_SUBDOMAIN_RE.fullmatch(name):
        raise _Invalid("metadata.name", f"{name!r} is not a valid Kubernetes object name")
    generation = metadata.get("generation", 0)
    if isinstance(generation, bool) or not isinstance(generation, int):
        raise _Invalid("metadata.generation", "must be an integer")
    return name, generation


def parse_match(obj: Mapping[str, Any]) -> Match:
    """Parse only `spec.match` of a policy object.

    For a policy that `parse_policy` refuses, this still tells which images it covers,
    so they can be refused (fail closed) rather than every image. Raises PolicyError
    when the match itself is unusable (then the caller must assume it matches all).
    """
    name = _policy_name(obj)
    try:
        return _parse_match(_mapping(_mapping(obj, "spec", ""), "match", "spec"), "spec.match")
    except _Invalid as error:
        raise errors.PolicyError(name, str(error)) from None


def parse_policy(obj: Mapping[str, Any]) -> ImagePolicy:
    """Validate an ImagePolicy object; raises errors.PolicyError naming field and reason."""
    if not isinstance(obj, Mapping):
        raise errors.PolicyError("<unnamed>", "not an object")
    name = _policy_name(obj)
    try:
        name, generation = _parse_header(obj)
        spec = _mapping(obj, "spec", "")
        _check_fields(
            spec,
            "spec",
            {"mode", "failurePolicy", "match", "rules", "pinDigest", "allowExceptions"},
        )
        return ImagePolicy(
            name=name,
            generation=generation,
            mode=_enum(spec, "mode", "spec", Mode, Mode.ENFORCE),
            failure_policy=_enum(spec, "failurePolicy", "spec", FailurePolicy, FailurePolicy.FAIL),
            match=_parse_match(_mapping(spec, "match", "spec"), "spec.match"),
            rules=_parse_rules(_mapping(spec, "rules", "spec"), "spec.rules"),
            pin_digest=_bool(spec, "pinDigest", "spec"),
            allow_exceptions=spec.get("allowExceptions") is None
            or _bool(spec, "allowExceptions", "spec"),
        )
    except _Invalid as error:
        # `from None`: the field path and reason are the whole story for the reader.
        raise errors.PolicyError(name, str(error)) from None
