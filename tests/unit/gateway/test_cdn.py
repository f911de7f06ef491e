"""cdnUrl as a CloudFront signed URL: canned policy, one hour, verifiable with the public key."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from pydantic import SecretStr

from imagegen.blobstore import InMemoryBlobStore
from imagegen.errors import ConfigurationError
from imagegen.settings import S3Settings
from services.gateway.cdn import CdnUrlSigner, signer_for
from services.gateway.gallery import Links
from services.gateway.settings import GatewaySettings

NOW = datetime(2026, 12, 6, 9, 0, 0, tzinfo=UTC)
BASE = "https://d111111abcdef8.cloudfront.net/media"
KEY = "users/u1/characters/c1/images/i1/v2/display.webp"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def cloudfront_b64decode(text: str) -> bytes:
    """CloudFront's URL-safe base64: '+' '=' '/' are sent as '-' '_' '~'."""
    return base64.b64decode(text.replace("-", "+").replace("_", "=").replace("~", "/"))


def verify(url: str, public: rsa.RSAPublicKey) -> tuple[str, int, str]:
    """What CloudFront checks for a canned policy: (resource, expiry epoch, key pair id)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert set(query) == {"Expires", "Signature", "Key-Pair-Id"}  # canned, not custom
    resource = url.split("?", 1)[0]
    expires = int(query["Expires"][0])
    policy = json.dumps(
        {
            "Statement": [
                {"Resource": resource, "Condition": {"DateLessThan": {"AWS:EpochTime": expires}}}
            ]
        },
        separators=(",", ":"),
    ).encode()
    signature = cloudfront_b64decode(query["Signature"][0])
    public.verify(signature, policy, padding.PKCS1v15(), hashes.SHA1())
    return resource, expires, query["Key-Pair-Id"][0]


def test_signed_url_verifies_with_the_public_key_and_expires_in_one_hour(
    key: rsa.RSAPrivateKey,
) -> None:
    signer = CdnUrlSigner("K2JCJMDEHXQW5F", pem(key), 3600, clock=lambda: NOW)
    url = signer.sign(f"{BASE}/{KEY}")
    resource, expires, key_pair = verify(url, key.public_key())
    assert resource == f"{BASE}/{KEY}"
    assert key_pair == "K2JCJMDEHXQW5F"
    assert expires == int(NOW.timestamp()) + 3600


def test_a_tampered_url_or_another_key_fails_verification(key: rsa.RSAPrivateKey) -> None:
    url = CdnUrlSigner("K1", pem(key), 3600, clock=lambda: NOW).sign(f"{BASE}/{KEY}")
    other = url.replace("/v2/", "/v3/")
    with pytest.raises(InvalidSignature):
        verify(other, key.public_key())
    later = url.replace(f"Expires={int(NOW.timestamp()) + 3600}", "Expires=4102444800")
    with pytest.raises(InvalidSignature):
        verify(later, key.public_key())
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(InvalidSignature):
        verify(url, stranger.public_key())


def test_links_sign_cdn_urls_when_a_signer_is_set(key: rsa.RSAPrivateKey) -> None:
    renditions = {"display": {"key": KEY}, "thumbnail": {"key": "t.webp"}}
    sign = CdnUrlSigner("K1", pem(key), 3600, clock=lambda: NOW).sign
    url = Links(InMemoryBlobStore(), 3600, cdn_base_url=BASE + "/", cdn_signer=sign).cdn(renditions)
    assert url is not None and url.startswith(f"{BASE}/{KEY}?Expires=")
    verify(url, key.public_key())
    unsigned = Links(InMemoryBlobStore(), 3600, cdn_base_url=BASE).cdn(renditions)
    assert unsigned == f"{BASE}/{KEY}"


def test_settings_build_the_signer_from_the_secret(key: rsa.RSAPrivateKey) -> None:
    settings = GatewaySettings(
        cloudfront_key_pair_id="K1",
        cloudfront_private_key=SecretStr(pem(key)),
        s3=S3Settings(cdn_base_url=BASE),
    )
    assert "BEGIN PRIVATE KEY" not in repr(settings)  # SecretStr: never logged
    sign = signer_for(settings)
    assert sign is not None
    _, expires, _ = verify(sign(f"{BASE}/{KEY}"), key.public_key())
    assert abs(expires - (datetime.now(UTC).timestamp() + 3600)) < 60
    assert signer_for(GatewaySettings()) is None


def test_half_a_key_pair_or_a_bad_key_is_refused(key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ConfigurationError, match="set both"):
        GatewaySettings(cloudfront_key_pair_id="K1", s3=S3Settings(cdn_base_url=BASE))
    with pytest.raises(ConfigurationError, match="CDN_BASE_URL"):
        GatewaySettings(cloudfront_key_pair_id="K1", cloudfront_private_key=SecretStr(pem(key)))
    with pytest.raises(ConfigurationError, match="PEM"):
        CdnUrlSigner("K1", "not a key", 3600)
    with pytest.raises(ConfigurationError, match="RSA"):
        CdnUrlSigner("K1", pem(ec.generate_private_key(ec.SECP256R1())), 3600)
