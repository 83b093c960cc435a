"""A webhook receiver on loopback that verifies every delivery with the standardwebhooks
library (the receiver's side of the specification) and records what it got."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook

SECRET = "whsec_" + base64.b64encode(b"test-webhook-secret-32-bytes-ok!").decode()


class Receiver:
    """``held=True``: a slow receiver the test controls. Every verified delivery is counted on
    arrival (``arrivals``, ``in_flight``, ``max_in_flight``), then waits until ``release()``
    before it is recorded in ``received`` and answered, however long that takes."""

    def __init__(self, secret: str = SECRET, *, held: bool = False) -> None:
        self.verifier = Webhook(secret)
        self.received: list[dict] = []  # verified deliveries: {"id", "payload"}
        self.arrivals: list[str] = []  # the webhook-id of each verified request, as it came
        self.in_flight = 0  # requests arrived and not yet answered
        self.max_in_flight = 0
        self.rejected = 0
        self.fail_next = 0  # answer 503 to this many deliveries first
        self.lock = threading.Lock()
        self.released = threading.Event()
        if not held:
            self.released.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.lock:
                    if receiver.fail_next > 0:
                        receiver.fail_next -= 1
                        self.send_response(503)
                        self.end_headers()
                        return
                    try:
                        payload = receiver.verifier.verify(body, headers)
                    except Exception:
                        receiver.rejected += 1
                        self.send_response(400)
                        self.end_headers()
                        return
                    receiver.arrivals.append(headers["webhook-id"])
                    receiver.in_flight += 1
                    receiver.max_in_flight = max(receiver.max_in_flight, receiver.in_flight)
                receiver.released.wait()
                with receiver.lock:
                    receiver.received.append({"id": headers["webhook-id"], "payload": payload})
                    receiver.in_flight -= 1
                try:
                    self.send_response(204)
                    self.end_headers()
                except OSError:
                    pass  # the sender gave up waiting (its timeout): it was still received

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()

    def release(self) -> None:
        """Let every held delivery, and every later one, be answered."""
        self.released.set()

    def arrivals_of(self, webhook_id: str) -> int:
        with self.lock:
            return self.arrivals.count(webhook_id)

    def unique(self) -> dict[str, dict]:
        """Deliveries deduplicated by webhook-id, as a receiver would."""
        return {d["id"]: d["payload"] for d in self.received}


def body_of(payload) -> str:
    return json.dumps(payload)
