"""`cdnUrl`: CloudFront signed URLs (canned policy) for final image objects.

With a CloudFront key pair configured (IMAGEGEN_CLOUDFRONT_KEY_PAIR_ID and the private
key, a secret, IMAGEGEN_CLOUDFRONT_PRIVATE_KEY), each URL under IMAGEGEN_S3_CDN_BASE_URL
is signed with botocore's CloudFrontSigner and expires after IMAGEGEN_CDN_URL_TTL_S (one
hour). The distribution trusts the matching public key (a key group) and restricts viewer
access; the objects themselves carry Cache-Control for 30 days (storage), so the edge
keeps them while each viewer's link still expires.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from botocore.signers import CloudFrontSigner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from imagegen.errors import ConfigurationError
from services.gateway.settings import GatewaySettings

Clock = Callable[[], datetime]


class CdnUrlSigner:
    """Signs CDN URLs with a canned policy that expires `ttl_s` after signing."""

    def __init__(
        self, key_pair_id: str, private_key_pem: str, ttl_s: int, clock: Clock | None = None
    ) -> None:
        try:
            key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"IMAGEGEN_CLOUDFRONT_PRIVATE_KEY is not an unencrypted PEM private key: {exc}"
            ) from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigurationError("IMAGEGEN_CLOUDFRONT_PRIVATE_KEY must be an RSA key")
        rsa_key = key

        def rsa_signer(message: bytes) -> bytes:
            # CloudFront's signature scheme: RSA, PKCS#1 v1.5, SHA-1 (its choice, not ours).
            return rsa_key.sign(message, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303

        self._signer = CloudFrontSigner(key_pair_id, rsa_signer)
        self._ttl = timedelta(seconds=ttl_s)
        self._clock = clock or (lambda: datetime.now(UTC))

    def sign(self, url: str) -> str:
        expires = self._clock() + self._ttl
        signed: str = self._signer.generate_presigned_url(url, date_less_than=expires)
        return signed


def signer_for(settings: GatewaySettings) -> Callable[[str], str] | None:
    """The configured key pair's signer, or None (unsigned CDN URLs, or no CDN)."""
    if settings.cloudfront_key_pair_id is None or settings.cloudfront_private_key is None:
        return None
    return CdnUrlSigner(
        settings.cloudfront_key_pair_id,
        settings.cloudfront_private_key.get_secret_value(),
        settings.cdn_url_ttl_s,
    ).sign
