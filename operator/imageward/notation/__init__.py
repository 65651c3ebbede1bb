"""Notary Project (Notation) signatures, verified natively beside cosign's.

A Notation signature is an OCI referrer of the signed manifest (artifactType
`application/vnd.cncf.notary.signature`) with one layer, the signature envelope: JWS
(`application/jose+json`) or COSE (`application/cose`). The envelope signs a payload
naming the target artifact's descriptor (media type, digest, size) with the key of
the first certificate of the chain it carries; the chain must lead to a certificate
of the authority's trust store, and the signing certificate's subject must be one of
its trusted identities.

Modules, all pure (the registry side fetches, `signatures.verify` calls in):

- `trust`: an authority's trust policy (trust stores, identities, verification level)
  and the X.509 distinguished names identities compare.
- `chain`: the certificate requirements of the signature specification (code signing
  and timestamping chains).
- `envelope`: JWS and COSE envelopes parsed into one shape, their signature checked.
- `timestamp`: RFC 3161 countersignatures (rfc3161-client).
- `verify`: one signature against one authority, in the order of the trust-policy
  specification (integrity, authenticity, expiry, authentic timestamp, revocation),
  then the signed descriptor against the admitted one.
- `revocation`: OCSP and CRL look-ups, for authorities that turn revocation on.
"""
