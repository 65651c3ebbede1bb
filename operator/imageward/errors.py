"""Typed errors. Each carries the facts a person needs to act on it.

Only the Kopf handlers (`imageward.main`) map these to Kopf's own errors; every other
module raises or returns them as data.
"""

from __future__ import annotations


class ImagewardError(Exception):
    """Root of every error imageward raises on purpose."""


class ConfigurationError(ImagewardError):
    """Settings or command-line input that cannot be used; names the bad variable."""


class RegistryError(ImagewardError):
    """A registry lookup failed. Subclasses say how; all name where."""

    #: short machine-readable kind, also used in messages and metric-free logs
    kind = "registry error"

    #: Whether this is an outage (the registry could not answer: unreachable, timeout,
    #: 5xx, 429, auth) rather than an answer. Only outages are `lookup` failures that
    #: `failurePolicy: Ignore` may admit; what a registry did serve (missing, malformed,
    #: oversized, tampered) is content anyone who can push controls, so it refuses.
    outage = False

    def __init__(
        self,
        message: str,
        *,
        registry: str,
        repository: str | None = None,
        reference: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.message = message
        self.registry = registry
        self.repository = repository
        self.reference = reference
        self.status = status
        self.retry_after = retry_after
        super().__init__(str(self))

    @property
    def where(self) -> str:
        where = self.registry
        if self.repository:
            where += f"/{self.repository}"
        if self.reference:
            where += ("@" if self.reference.startswith("sha256:") else ":") + self.reference
        return where

    def __str__(self) -> str:
        status = f" (HTTP {self.status})" if self.status is not None else ""
        return f"{self.where}: {self.kind}{status}: {self.message}"

    def clone(self) -> RegistryError:
        """A fresh error with the same facts (a cached error raised again gets no old traceback)."""
        return type(self)(
            self.message,
            registry=self.registry,
            repository=self.repository,
            reference=self.reference,
            status=self.status,
            retry_after=self.retry_after,
        )


class NotFoundError(RegistryError):
    kind = "not found"


class UnauthorizedError(RegistryError):
    outage = True
    kind = "unauthorized"


class RateLimitedError(RegistryError):
    outage = True
    kind = "rate limited"


class RegistryTimeoutError(RegistryError):
    outage = True
    kind = "timed out"


class UnreachableError(RegistryError):
    outage = True
    kind = "unreachable"


class BadResponseError(RegistryError):
    kind = "bad response"


class ServerError(BadResponseError):
    """5xx answers (after retries): the registry's fault, worth trying again later."""

    kind = "server error"
    outage = True


class DigestMismatchError(RegistryError):
    kind = "digest mismatch"


class TooLargeError(RegistryError):
    kind = "too large"


class ContainerdError(ImagewardError):
    """A containerd API call failed. Subclasses say how; all name the socket and the call."""

    kind = "containerd error"

    def __init__(self, message: str, *, socket: str, call: str, code: str | None = None) -> None:
        self.message = message
        self.socket = socket
        self.call = call
        self.code = code  # the gRPC status code name, e.g. "NOT_FOUND"
        super().__init__(str(self))

    def __str__(self) -> str:
        code = f" ({self.code})" if self.code else ""
        return f"containerd at {self.socket}: {self.call}: {self.kind}{code}: {self.message}"


class ContainerdUnavailableError(ContainerdError):
    """No answer on the socket (containerd down, socket missing), or a write ref held by
    another writer; worth trying again."""

    kind = "unavailable"


class ContainerdNotFoundError(ContainerdError):
    kind = "not found"


class ContainerdAlreadyExistsError(ContainerdError):
    kind = "already exists"


class CredentialsError(ImagewardError):
    """A docker config or pull Secret that cannot be read; names where it came from."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"credentials from {source}: {reason}")


class InvalidReferenceError(ImagewardError):
    """An image reference that cannot be parsed."""

    def __init__(self, reference: str, reason: str) -> None:
        self.reference = reference
        self.reason = reason
        super().__init__(f"invalid image reference {reference!r}: {reason}")


class PolicyError(ImagewardError):
    """An ImagePolicy that cannot be used (bad glob, bad PEM, missing Secret...)."""

    def __init__(self, policy: str, reason: str) -> None:
        self.policy = policy
        self.reason = reason
        super().__init__(f"ImagePolicy {policy}: {reason}")


class SignatureError(ImagewardError):
    """A signature that could not be read or does not verify; data for a Violation."""


class MalformedObjectError(ImagewardError):
    """A Kubernetes object whose fields have the wrong shape.

    Mutating admission sees objects before the apiserver validates them, so a container
    list that is not a list or an image that is not a string reaches us as data; this
    names the kind, the field path (`spec.template.spec.containers[0].image`, as
    kubectl prints paths) and what is wrong, instead of a TypeError.
    """

    def __init__(self, kind: str, path: str, reason: str) -> None:
        self.kind = kind
        self.path = path
        self.reason = reason
        super().__init__(f"{kind} {path}: {reason}" if path else f"{kind}: {reason}")


class MalformedReviewError(ImagewardError):
    """An AdmissionReview body that does not have the shape the apiserver sends."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"malformed AdmissionReview: {path}: {reason}")
