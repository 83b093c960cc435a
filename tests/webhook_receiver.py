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
    def __init__(self, secret: str = SECRET) -> None:
        self.verifier = Webhook(secret)
        self.received: list[dict] = []  # verified deliveries: {"id", "payload"}
        self.rejected = 0
        self.fail_next = 0  # answer 503 to this many deliveries first
        self.lock = threading.Lock()
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
                    receiver.received.append({"id": headers["webhook-id"], "payload": payload})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def unique(self) -> dict[str, dict]:
        """Deliveries deduplicated by webhook-id, as a receiver would."""
        return {d["id"]: d["payload"] for d in self.received}


def body_of(payload) -> str:
    return json.dumps(payload)
