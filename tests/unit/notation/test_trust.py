"""Trust policies of notation authorities: identities, levels, stores; and loading them
from an ImagePolicy (inline, Secret, ConfigMap), duplicates refused."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest

from imageward import policystore
from imageward.notation import trust
from imageward.policy import model
from imageward.signatures import model as signatures_model
from imageward.signatures import verify
from tests.unit.notation import pki


def test_parse_dn_follows_rfc_4514_as_notation_reads_it() -> None:
    assert trust.parse_dn("C=US, ST=WA, O=Acme\\, Inc., CN=release") == {
        "C": "US",
        "ST": "WA",
        "O": "Acme, Inc.",
        "CN": "release",
    }
    assert trust.parse_dn("c=US,s=WA,o=Acme") == {"C": "US", "ST": "WA", "O": "Acme"}
    assert trust.parse_dn("C=US,ST=WA,O=\\41cme") == {"C": "US", "ST": "WA", "O": "Acme"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("C=US, O=Acme", "lacks ST"),
        ("C=US, ST=WA, O=Acme, O=Other", "has attribute O twice"),
        ("C=US+ST=WA, O=Acme", "multi-valued RDN"),
        ("C=US, ST=WA, O=#0403414243", "'#' (hex) value"),
        ("C=US, ST=WA, O", "has no '='"),
        ("C=US, ST=WA, O=Acme\\", "lone backslash"),
    ],
)
def test_parse_dn_refuses(text: str, message: str) -> None:
    with pytest.raises(trust.DNError, match=re.escape(message)):
        trust.parse_dn(text)


def test_identities() -> None:
    assert trust.parse_identities(["*"], authority="a") is None
    (one,) = trust.parse_identities(["x509.subject: C=US, ST=WA, O=Acme"], authority="a") or ()
    assert one.matches({"C": "US", "ST": "WA", "O": "Acme", "CN": "x"})
    assert not one.matches({"C": "US", "ST": "WA"})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["*", "x509.subject: C=US, ST=WA, O=Acme"], "'\\*' must be the only entry"),
        (["C=US, ST=WA, O=Acme"], "is not of the form"),
        (["x509.subject: C=US"], "lacks ST"),
        (
            ["x509.subject: C=US, ST=WA, O=Acme", "x509.subject: C=US, ST=WA, O=Acme, OU=Build"],
            "overlap",
        ),
    ],
)
def test_identities_refused(values: list[str], message: str) -> None:
    with pytest.raises(signatures_model.AuthorityError, match=message):
        trust.parse_identities(values, authority="a")


def test_distinct_identities_do_not_overlap() -> None:
    found = trust.parse_identities(
        ["x509.subject: C=US, ST=WA, O=Acme, CN=a", "x509.subject: C=US, ST=WA, O=Acme, CN=b"],
        authority="a",
    )
    assert found is not None and len(found) == 2


def test_levels_and_overrides() -> None:
    root = pki.ca()
    store = trust.Store((root.der,))
    strict = trust.build_policy(authority="a", ca=store, identities=["*"])
    assert (strict.authenticity, strict.authentic_timestamp, strict.expiry, strict.revocation) == (
        "enforce",
        "enforce",
        "enforce",
        "skip",  # off by default here (documented)
    )
    audit = trust.build_policy(
        authority="a", ca=store, identities=["*"], level="audit", override={"revocation": "enforce"}
    )
    assert (audit.authenticity, audit.revocation) == ("log", "enforce")
    with pytest.raises(signatures_model.AuthorityError, match="needs a trustStore"):
        trust.build_policy(authority="a", identities=["*"])
    with pytest.raises(signatures_model.AuthorityError, match="override 'integrity'"):
        trust.build_policy(authority="a", ca=store, identities=["*"], override={"integrity": "log"})


def test_parse_certificates() -> None:
    root, other = pki.ca(), pki.ca()
    store = trust.parse_certificates(root.pem + other.pem, authority="a", what="trustStore")
    assert store.certificates == (root.der, other.der)
    assert trust.parse_certificates(root.der, authority="a", what="trustStore").certificates == (
        root.der,
    )
    with pytest.raises(signatures_model.AuthorityError, match="trustStore is not a PEM"):
        trust.parse_certificates(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            authority="a",
            what="trustStore",
        )


# -- from an ImagePolicy ----------------------------------------------------------------


def policy(*authorities: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "imageward.io/v1alpha1",
        "kind": "ImagePolicy",
        "metadata": {"name": "p", "generation": 1},
        "spec": {"rules": {"signatures": {"authorities": list(authorities)}}},
    }


async def test_load_inline_secret_and_config_map() -> None:
    root, tsa_root = pki.ca(), pki.ca()
    secret = base64.b64encode(root.pem).decode()

    async def read_secret(ref: model.SecretKeyRef) -> bytes | None:
        assert (ref.namespace, ref.name, ref.key) == ("ns", "roots", "ca.crt")
        return policystore.decode_secret_value({"data": {"ca.crt": secret}}, ref.key)

    async def read_config_map(ref: model.ConfigMapKeyRef) -> str | None:
        assert (ref.name, ref.key) == ("tsa", "roots.pem")
        return tsa_root.pem.decode()

    loaded = await policystore.load_policy(
        policy(
            {
                "name": "acr",
                "notation": {
                    "trustStore": {"secretRef": {"namespace": "ns", "name": "roots"}},
                    "timestampTrustStore": {
                        "configMapRef": {"namespace": "ns", "name": "tsa", "key": "roots.pem"}
                    },
                    "trustedIdentities": ["x509.subject: C=US, ST=WA, O=Acme, CN=release"],
                    "verificationLevel": "permissive",
                    "override": {"revocation": "log"},
                    "verifyTimestamp": "afterCertExpiry",
                },
            }
        ),
        read_secret=read_secret,
        read_config_map=read_config_map,
    )
    assert loaded.error is None, loaded.error
    (resolved,) = loaded.authorities
    assert isinstance(resolved, verify.NotationAuthority)
    assert resolved.policy.ca.certificates == (root.der,)
    assert resolved.policy.tsa.certificates == (tsa_root.der,)
    assert (resolved.policy.level, resolved.policy.revocation) == ("permissive", "log")
    assert resolved.policy.verify_timestamp == "afterCertExpiry"


async def test_duplicate_notation_authorities_are_refused() -> None:
    root = pki.ca()
    spec = {"trustStore": {"pem": root.pem.decode()}, "trustedIdentities": ["*"]}
    loaded = await policystore.load_policy(
        policy({"name": "a", "notation": spec}, {"name": "b", "notation": spec})
    )
    assert loaded.error is not None
    assert loaded.reason == (
        "authorities a and b have the same Notation trust stores and trusted identities: one "
        "signer would count twice towards the threshold"
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"trustedIdentities": ["*"]}, "set trustStore (CA roots) or signingAuthorityTrustStore"),
        (
            {"trustStore": {"pem": "x"}, "trustedIdentities": ["*"]},
            "is not PEM certificates",
        ),
        (
            {
                "trustStore": {
                    "pem": "-----BEGIN CERTIFICATE-----",
                    "secretRef": {"namespace": "n", "name": "s"},
                },
                "trustedIdentities": ["*"],
            },
            "set exactly one of pem, secretRef and configMapRef",
        ),
        (
            {
                "trustStore": {"pem": "-----BEGIN CERTIFICATE-----"},
                "trustedIdentities": ["*"],
                "verificationLevel": "skip",
            },
            "'skip' is not one of strict, permissive, audit",
        ),
        (
            {"trustStore": {"pem": "-----BEGIN CERTIFICATE-----"}, "trustedIdentities": []},
            "trustedIdentities: required",
        ),
        (
            {
                "trustStore": {"pem": "-----BEGIN CERTIFICATE-----"},
                "trustedIdentities": ["*"],
                "override": {"revocation": "never"},
            },
            "'never' is not one of enforce, log, skip",
        ),
    ],
)
def test_policy_model_refuses(spec: dict[str, Any], message: str) -> None:
    from imageward import errors

    with pytest.raises(errors.PolicyError, match=re.escape(message)):
        model.parse_policy(policy({"name": "n", "notation": spec}))


async def test_unusable_trust_store_makes_the_policy_unusable() -> None:
    loaded = await policystore.load_policy(
        policy(
            {
                "name": "n",
                "notation": {
                    "trustStore": {
                        "pem": "-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----"
                    },
                    "trustedIdentities": ["*"],
                },
            }
        )
    )
    assert loaded.error is not None and "authority n: trustStore is not a PEM" in loaded.reason
    missing = await policystore.load_policy(
        policy(
            {
                "name": "n",
                "notation": {
                    "trustStore": {"configMapRef": {"namespace": "ns", "name": "gone"}},
                    "trustedIdentities": ["*"],
                },
            }
        )
    )
    assert missing.reason == (
        "authority n: trustStore: ConfigMap ns/gone key ca.crt cannot be read here (no cluster)"
    )


def test_attestations_refuse_notation_authorities() -> None:
    from imageward import errors

    document = policy(
        {"name": "k", "key": {"pem": "-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----"}}
    )
    document["spec"]["rules"]["attestations"] = [
        {
            "name": "sbom",
            "predicateType": "https://spdx.dev/Document",
            "authorities": [
                {
                    "name": "n",
                    "notation": {
                        "trustStore": {"pem": "-----BEGIN CERTIFICATE-----"},
                        "trustedIdentities": ["*"],
                    },
                }
            ],
        }
    ]
    with pytest.raises(
        errors.PolicyError, match="Notation signs artifacts, not in-toto attestations"
    ):
        model.parse_policy(document)
