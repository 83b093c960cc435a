"""Webhook signing and delivery, verified by the standardwebhooks library on the receiver."""

from __future__ import annotations

import pytest
from webhook_receiver import SECRET, Receiver

from gateway.webhooks import DeliveryFailed, WebhookSender

from support import free_port


def test_a_delivery_is_signed_and_verifiable():
    with Receiver() as receiver:
        sender = WebhookSender(receiver.url, SECRET, timeout=5)
        assert sender.deliver("m1.media.ready", {"type": "media.ready", "data": {"x": 1}}) == 204
    assert receiver.received == [
        {"id": "m1.media.ready", "payload": {"type": "media.ready", "data": {"x": 1}}}
    ]
    assert receiver.rejected == 0


def test_a_wrong_secret_is_rejected_by_the_receiver():
    other = "whsec_" + "b3RoZXItc2VjcmV0LW9mLTMyLWJ5dGVzLWxvbmch"
    with Receiver() as receiver, pytest.raises(DeliveryFailed, match="answered 400"):
        WebhookSender(receiver.url, other, timeout=5).deliver("m1", {"a": 1})
    assert receiver.received == [] and receiver.rejected == 1


def test_a_failing_receiver_is_a_failed_delivery():
    with Receiver() as receiver:
        receiver.fail_next = 1
        sender = WebhookSender(receiver.url, SECRET, timeout=5)
        with pytest.raises(DeliveryFailed, match="answered 503"):
            sender.deliver("m1", {"a": 1})
        assert sender.deliver("m1", {"a": 1}) == 204
    with pytest.raises(DeliveryFailed, match="unreachable"):
        WebhookSender(f"http://127.0.0.1:{free_port()}/", SECRET, timeout=2).deliver("m", {})
