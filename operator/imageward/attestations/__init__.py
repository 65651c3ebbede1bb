"""Attestations: signed in-toto statements (vulnerability scans, SBOMs, build
provenance) that an image must carry, verified like signatures and then judged.

Pure, like `signatures/`: fetching is `imagesource`'s job. Modules: `envelopes`
(the two on-registry forms: legacy `sha256-<hex>.att` DSSE layers and Sigstore
bundles, read into candidates), `verify` (which authorities vouch for a statement
of the wanted predicate type naming the digest), `rules` (the built-in
vulnerability and age rules, and CEL conditions), `cel` (the CEL environment) and
`evaluate` (one policy entry against what was found: pass, fail or error, and the
sentence a developer can act on).
"""
