"""Pure verification of cosign signatures: bytes in, results as data.

`verify.verify()` is the entry point. Fetching the signature manifests, referrers and
blobs is the registry client's job; nothing here does I/O.

Modules: `keys` (policy public keys), `legacy` (the `sha256-<hex>.sig` simple-signing
format), `bundle` (Sigstore bundles found as OCI referrers), `keyless` (Fulcio
certificates, Rekor entries and identities against an offline trusted root), `model`
(the result types they share) and `verify` (authorities, thresholds, reasons).
"""
