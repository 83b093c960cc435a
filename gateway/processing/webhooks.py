"""Webhooks after the Standard Webhooks specification (standardwebhooks.com), signed by its
reference library: headers ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``
(HMAC-SHA256 with the ``whsec_`` secret). The id is stable per event (``<mediaId>.<event>``),
so a receiver deduplicates a redelivery by it.

Delivery is a job on its own queue (``GATEWAY_WEBHOOK_QUEUE_URL``), run by the worker's
deliveries lane (gateway/processing/deliveries.py; ``GATEWAY_WEBHOOK_CONCURRENCY`` at once): a
slow receiver fills that lane only, never a processing slot. One job is one attempt is one POST:
while it runs the worker's heartbeat keeps its lease, so no other worker sends it meanwhile. A
failure (no answer within ``GATEWAY_WEBHOOK_TIMEOUT``, a non-2xx status) is retried with backoff
by the worker and ends as a dead letter of the webhook queue.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

from standardwebhooks import Webhook

log = logging.getLogger(__name__)
USER_AGENT = "upload-gateway-webhooks/1"
JOB_TYPE = "webhook"  # a queue message {"type": "webhook", "id", "event"}


class DeliveryFailed(RuntimeError):
    """The receiver did not accept the webhook (retry later)."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is the receiver's answer (a failed attempt), not a second POST


class WebhookSender:
    def __init__(self, url: str, secret: str, *, timeout: float) -> None:
        self.url = url
        self.signer = Webhook(secret)
        self.timeout = timeout
        self._opener = urllib.request.build_opener(_NoRedirects)

    def signed_request(
        self, message_id: str, payload: dict[str, Any], now: datetime | None = None
    ) -> urllib.request.Request:
        body = json.dumps(payload, separators=(",", ":"))
        at = (now or datetime.now(UTC)).replace(microsecond=0)
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": message_id,
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": self.signer.sign(message_id, at, body),
        }
        # The URL is GATEWAY_WEBHOOK_URL, validated as http(s) at start-up.
        return urllib.request.Request(  # noqa: S310
            self.url, data=body.encode(), headers=headers, method="POST"
        )

    def deliver(self, message_id: str, payload: dict[str, Any]) -> int:
        request = self.signed_request(message_id, payload)
        try:
            with self._opener.open(request, timeout=self.timeout) as answer:
                status = int(answer.status)
        except urllib.error.HTTPError as exc:
            raise DeliveryFailed(f"the receiver answered {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise DeliveryFailed(f"the receiver is unreachable: {exc}") from None
        if not 200 <= status < 300:
            raise DeliveryFailed(f"the receiver answered {status}")
        return status
