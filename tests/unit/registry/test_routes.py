from __future__ import annotations

import email.utils

import pytest

from imageward.registry import model, reference, routes

DIGEST = model.Digest("sha256:" + "c" * 64)


def test_docker_hub_endpoint_and_plain_http_only_when_insecure() -> None:
    (hub,) = routes.build_endpoints("docker.io")
    (local,) = routes.build_endpoints("127.0.0.1:5000", insecure=["127.0.0.1:5000"])
    (secure,) = routes.build_endpoints("127.0.0.1:5001", insecure=["127.0.0.1:5000"])
    assert hub.base_url == "https://registry-1.docker.io"
    assert local.base_url == "http://127.0.0.1:5000" and local.plain_http
    assert secure.base_url == "https://127.0.0.1:5001"


def test_mirrors_come_first_and_name_their_upstream() -> None:
    endpoints = routes.build_endpoints(
        "docker.io",
        insecure=["mirror.local:5000"],
        mirrors=[
            ("index.docker.io", "mirror.local:5000"),
            ("docker.io", "https://cache.example/prefix/v2/"),
            ("ghcr.io", "other.example"),
        ],
    )
    assert [e.base_url for e in endpoints] == [
        "http://mirror.local:5000",
        "https://cache.example/prefix",
        "https://registry-1.docker.io",
    ]
    assert routes.build_manifest_url(endpoints[0], "library/nginx", "1.25") == (
        "http://mirror.local:5000/v2/library/nginx/manifests/1.25?ns=docker.io"
    )
    assert routes.build_blob_url(endpoints[2], "library/nginx", DIGEST) == (
        f"https://registry-1.docker.io/v2/library/nginx/blobs/{DIGEST}"
    )


def test_bad_mirror() -> None:
    with pytest.raises(ValueError, match="not an http"):
        routes.parse_mirror("ftp://x", registry="docker.io", insecure=[])


def test_referrers_url_and_tags() -> None:
    (endpoint,) = routes.build_endpoints("ghcr.io")
    url = routes.build_referrers_url(
        endpoint, "acme/web", DIGEST, artifact_type="application/vnd.dev.sigstore.bundle.v0.3+json"
    )
    assert url == (
        f"https://ghcr.io/v2/acme/web/referrers/{DIGEST}"
        "?artifactType=application%2Fvnd.dev.sigstore.bundle.v0.3%2Bjson"
    )
    assert reference.build_referrers_tag(DIGEST) == "sha256-" + "c" * 64
    assert reference.build_signature_tag(DIGEST) == "sha256-" + "c" * 64 + ".sig"
    assert len(reference.build_referrers_tag(model.Digest("sha512:" + "d" * 128))) == 128


def test_origins_and_redirects() -> None:
    assert routes.build_origin("https://Ghcr.io/v2/x") == ("https", "ghcr.io:443")
    assert routes.build_origin("https://ghcr.io:443/v2/x") == routes.build_origin(
        "https://ghcr.io/"
    )
    assert routes.build_origin("https://user@ghcr.io/v2/x") == ("https", "ghcr.io:443")
    assert routes.build_origin("http://r.io/") != routes.build_origin("https://r.io/")
    assert routes.build_origin("http://[::1]:5000/v2/") == ("http", "[::1]:5000")
    assert routes.evaluate_followable("https://r.io/a", "https://s3.example/b")
    assert routes.evaluate_followable("http://r.io/a", "https://r.io/b")
    assert not routes.evaluate_followable("https://r.io/a", "http://r.io/b")
    assert not routes.evaluate_followable("https://r.io/a", "file:///etc/passwd")
    assert routes.build_redirect_url("https://r.io/v2/a/blobs/x", "/storage/y?sig=1") == (
        "https://r.io/storage/y?sig=1"
    )
    assert routes.build_redirect_url("https://r.io/v2/a", "https://s3.example/b") == (
        "https://s3.example/b"
    )


def test_retry_after() -> None:
    now = 1_700_000_000.0
    assert routes.parse_retry_after("7", now=now) == 7.0
    assert routes.parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == 30.0
    assert routes.parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert routes.parse_retry_after("soon", now=now) is None
    assert routes.parse_retry_after(None, now=now) is None


def test_error_bodies() -> None:
    body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}'
    assert routes.parse_error_body(body) == "MANIFEST_UNKNOWN: manifest unknown"
    assert routes.parse_error_body(b"<html>\n  Bad   gateway</html>") == "<html> Bad gateway</html>"
    assert routes.parse_error_body(b"x" * 1000, limit=10) == "x" * 10
    assert routes.parse_error_body(b'{"errors": [5]}') == '{"errors": [5]}'


def test_next_link() -> None:
    link = '</v2/a/referrers/sha256:x?n=10&last=b>; rel="next"'
    assert routes.parse_next_link(link) == "/v2/a/referrers/sha256:x?n=10&last=b"
    assert routes.parse_next_link('<x>; rel="prev"') is None
    assert routes.parse_next_link(None) is None
