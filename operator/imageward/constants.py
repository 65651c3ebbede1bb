"""Names shared across modules: API group, labels, annotations, rule ids."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (PEP 781)

if TYPE_CHECKING:
    from typing import Final

GROUP: Final = "imageward.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

IMAGEPOLICY_PLURAL: Final = "imagepolicies"
PREPULL_PLURAL: Final = "prepulls"

LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_PREPULL: Final = "imageward.io/prepull"
MANAGER_NAME: Final = "imageward"
ANNOTATION_PAUSED: Final = "imageward.io/paused"

# Rule ids: messages, CLI output and metric labels use these exact strings.
RULE_ALLOWED_REGISTRIES: Final = "allowedRegistries"
RULE_FORBIDDEN_TAGS: Final = "forbiddenTags"
RULE_REQUIRE_DIGEST: Final = "requireDigest"
RULE_MAX_COMPRESSED_SIZE: Final = "maxCompressedSize"
RULE_MAX_LAYERS: Final = "maxLayers"
RULE_MAX_LAYER_SIZE: Final = "maxLayerSize"
RULE_FORBID_ROOT_USER: Final = "forbidRootUser"
RULE_SIGNATURES: Final = "signatures"
#: Signed in-toto attestations (vulnerability scans, SBOMs, provenance) and their rules.
RULE_ATTESTATIONS: Final = "attestations"
RULE_LOOKUP: Final = "lookup"
#: When a pin-only policy's tag cannot be resolved to a digest from what the registry served.
RULE_PIN_DIGEST: Final = "pinDigest"
#: A refinement of forbidRootUser (reported under that rule id).
FIELD_REQUIRE_NUMERIC_USER: Final = "requireNumericUser"
