"""A test RFC 3161 timestamping authority: TimeStampTokens (CMS SignedData over a
TSTInfo, ECDSA P-256, signingCertificateV2) built with a small DER writer, and an HTTP
server that answers TimeStampReqs, as `notation sign --timestamp-url` sends them."""

from __future__ import annotations

import datetime
import hashlib
import http.server
import threading
from collections.abc import Sequence

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.unit.notation import pki

SHA256 = "2.16.840.1.101.3.4.2.1"
SHA384 = "2.16.840.1.101.3.4.2.2"
SHA512 = "2.16.840.1.101.3.4.2.3"
ECDSA_SHA256 = "1.2.840.10045.4.3.2"
SIGNED_DATA = "1.2.840.113549.1.7.2"
TST_INFO = "1.2.840.113549.1.9.16.1.4"
CONTENT_TYPE = "1.2.840.113549.1.9.3"
MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
SIGNING_TIME = "1.2.840.113549.1.9.5"
SIGNING_CERTIFICATE_V2 = "1.2.840.113549.1.9.16.2.47"
POLICY = "1.3.6.1.4.1.55555.1"


# -- DER writing ------------------------------------------------------------------------


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _length(len(content)) + content


def seq(*items: bytes) -> bytes:
    return tlv(0x30, b"".join(items))


def set_of(*items: bytes) -> bytes:
    return tlv(0x31, b"".join(sorted(items)))


def integer(value: int) -> bytes:
    raw = value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)
    return tlv(0x02, raw)


def octets(data: bytes) -> bytes:
    return tlv(0x04, data)


def oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([40 * parts[0] + parts[1]])
    for part in parts[2:]:
        chunk = [part & 0x7F]
        part >>= 7
        while part:
            chunk.append(0x80 | (part & 0x7F))
            part >>= 7
        body += bytes(reversed(chunk))
    return tlv(0x06, bytes(body))


def generalized_time(moment: datetime.datetime) -> bytes:
    return tlv(0x18, moment.astimezone(datetime.UTC).strftime("%Y%m%d%H%M%SZ").encode())


def utc_time(moment: datetime.datetime) -> bytes:
    return tlv(0x17, moment.astimezone(datetime.UTC).strftime("%y%m%d%H%M%SZ").encode())


def explicit(number: int, content: bytes) -> bytes:
    return tlv(0xA0 | number, content)


def algorithm(dotted: str) -> bytes:
    return seq(oid(dotted))


# -- DER reading (just enough for a TimeStampReq) ------------------------------------------


def _read(data: bytes, offset: int) -> tuple[int, bytes, int]:
    tag = data[offset]
    length = data[offset + 1]
    offset += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[offset : offset + count], "big")
        offset += count
    return tag, data[offset : offset + length], offset + length


def _children(content: bytes) -> list[tuple[int, bytes]]:
    found, offset = [], 0
    while offset < len(content):
        tag, value, offset = _read(content, offset)
        found.append((tag, value))
    return found


def parse_request(der: bytes) -> tuple[bytes, bytes, int | None]:
    """(hash AlgorithmIdentifier as sent, message hash, nonce) of a TimeStampReq."""
    _, body, _ = _read(der, 0)
    fields = _children(body)
    imprint = _children(fields[1][1])
    nonce = None
    for tag, value in fields[2:]:
        if tag == 0x02:
            nonce = int.from_bytes(value, "big", signed=True)
    return seq(imprint[0][1]), imprint[1][1], nonce


# -- the token ------------------------------------------------------------------------------


class Authority:
    """A TSA: its signing certificate (critical EKU timeStamping) under `root`."""

    def __init__(self, root: pki.Issued | None = None) -> None:
        self.root = root or pki.ca(pki.name(C="US", ST="WA", O="Acme", CN="Acme TSA Root"))
        self.signer = pki.tsa(self.root)
        self.serial = 1

    def token(
        self,
        message_hash: bytes,
        hash_oid: str | bytes = SHA256,
        *,
        nonce: int | None = None,
        gen_time: datetime.datetime | None = None,
        accuracy_seconds: int | None = 1,
    ) -> bytes:
        """A TimeStampToken (ContentInfo) for `message_hash`."""
        moment = gen_time or datetime.datetime.now(datetime.UTC)
        self.serial += 1
        info_fields = [
            integer(1),
            oid(POLICY),
            seq(
                hash_oid if isinstance(hash_oid, bytes) else algorithm(hash_oid),
                octets(message_hash),
            ),
            integer(self.serial),
            generalized_time(moment),
        ]
        if accuracy_seconds is not None:
            info_fields.append(seq(integer(accuracy_seconds)))
        if nonce is not None:
            info_fields.append(integer(nonce))
        tst_info = seq(*info_fields)
        signer_cert = self.signer.der
        attributes = [
            seq(oid(CONTENT_TYPE), set_of(oid(TST_INFO))),
            seq(oid(SIGNING_TIME), set_of(utc_time(moment))),
            seq(oid(MESSAGE_DIGEST), set_of(octets(hashlib.sha256(tst_info).digest()))),
            seq(
                oid(SIGNING_CERTIFICATE_V2),
                set_of(seq(seq(seq(octets(hashlib.sha256(signer_cert).digest()))))),
            ),
        ]
        signed_attrs = set_of(*attributes)
        key = self.signer.key
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        signature = key.sign(signed_attrs, ec.ECDSA(hashes.SHA256()))
        issuer = self.signer.cert.issuer.public_bytes()
        signer_info = seq(
            integer(1),
            seq(issuer, integer(self.signer.cert.serial_number)),
            algorithm(SHA256),
            b"\xa0" + signed_attrs[1:],  # [0] IMPLICIT SET OF Attribute
            algorithm(ECDSA_SHA256),
            octets(signature),
        )
        certificates = b"\xa0" + set_of(signer_cert, self.root.der)[1:]
        signed_data = seq(
            integer(3),
            set_of(algorithm(SHA256)),
            seq(oid(TST_INFO), explicit(0, octets(tst_info))),
            certificates,
            set_of(signer_info),
        )
        return seq(oid(SIGNED_DATA), explicit(0, signed_data))

    def respond(self, request: bytes) -> bytes:
        # The imprint's AlgorithmIdentifier goes back as sent (NULL parameters or none).
        hash_algorithm, message_hash, nonce = parse_request(request)
        return seq(seq(integer(0)), self.token(message_hash, hash_algorithm, nonce=nonce))

    def token_for(self, signature: bytes) -> bytes:
        """The countersignature notation attaches: a token over sha256(signature)."""
        return self.token(hashlib.sha256(signature).digest())

    @property
    def root_pem(self) -> bytes:
        return self.root.cert.public_bytes(serialization.Encoding.PEM)


class Server:
    """`Authority.respond` over HTTP on loopback (application/timestamp-query)."""

    def __init__(self, authority: Authority, *, hashes_seen: Sequence[str] = ()) -> None:
        self.authority = authority
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                server.requests += 1
                answer = server.authority.respond(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/timestamp-reply")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/tsa"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()
