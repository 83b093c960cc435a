"""Public URLs for stored objects: CloudFront-signed, CDN, the store's own, or the gateway's."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from gateway.config import ConfigError, Settings
from gateway.storage import ObjectStore


class PublicUrls:
    def __init__(
        self,
        settings: Settings,
        store: ObjectStore,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.cdn_base = settings.cdn_base_url.rstrip("/")
        self.public_base = settings.public_base_url.rstrip("/")
        self.ttl = timedelta(seconds=settings.cloudfront_url_ttl)
        self.store = store
        self.clock = clock
        self.signer: Any = None  # botocore's CloudFrontSigner: loaded only when configured
        if settings.cloudfront_key_id:
            from botocore.signers import CloudFrontSigner

            key = serialization.load_pem_private_key(
                settings.cloudfront_private_key_pem.encode(), password=None
            )
            if not isinstance(key, rsa.RSAPrivateKey):
                raise ConfigError("GATEWAY_CLOUDFRONT_PRIVATE_KEY: must be an RSA private key")
            self.signer = CloudFrontSigner(
                settings.cloudfront_key_id,
                # CloudFront's signed URLs are RSA-SHA1 by its specification.
                lambda message: key.sign(message, padding.PKCS1v15(), hashes.SHA1()),  # noqa: S303
            )

    def url(self, key: str, *, request_base: str = "") -> str:
        """``request_base`` (the request's own root URL) is used only in embedded mode.

        A CDN serves the storage prefix (CloudFront's origin path is the prefix of
        ``GATEWAY_STORAGE_URL``), so its path is the store's key; anything kept outside the prefix
        is out of its reach.
        """
        if self.cdn_base:
            url = f"{self.cdn_base}/{quote(key)}"
            if self.signer is not None:
                url = self.signer.generate_presigned_url(
                    url, date_less_than=self.clock() + self.ttl
                )
            return url
        direct = self.store.direct_url(key)
        if direct is not None:
            return direct
        return f"{self.public_base or request_base.rstrip('/')}/media/{quote(key)}"
