"""A loopback HTTP server that answers from a script and records every request: the stand-in
for a step's target (the user's own API) and for answers the real gateway gives only under
load (503 with Retry-After). Used by the outbox tests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Answer = tuple[int, dict[str, str]]


class ScriptedServer:
    """``script``: (status, headers) for the first requests, then ``otherwise``; ``body_for``:
    the answer's body from its status and the number of requests so far."""

    def __init__(
        self,
        *script: Answer,
        port: int = 0,
        otherwise: Answer = (200, {}),
        body_for: Callable[[int, int], bytes] = lambda status, count: b"",
    ) -> None:
        self.script = list(script)
        self.got: list[dict] = []  # method, path, headers, body
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.got.append({"method": self.command, "path": self.path,
                                   "headers": dict(self.headers), "body": body})  # fmt: skip
                status, headers = server.script.pop(0) if server.script else otherwise
                payload = body_for(status, len(server.got))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
