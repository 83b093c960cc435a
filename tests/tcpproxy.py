"""A TCP relay on 127.0.0.1 in front of a server, for browsers: it can cut the network and
throttle what clients send.

    proxy = TcpProxy(stack.url).start()      # the browser opens proxy.url
    proxy.cut()                              # every open connection dropped, new ones refused
    proxy.restore()
    proxy.rate = 1 * MiB                     # client -> server bytes per second (None: as fast)
    proxy.drop()                             # every open connection dropped; new ones go through
    proxy.stop()

It relays bytes without reading HTTP, so a drop lands wherever the bytes are (mid-body), as a
lost connection does; Chromium's own upload throttling did not slow a loopback upload.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from urllib.parse import urlsplit

BLOCK = 16 * 1024


class TcpProxy:
    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rate: int | None = None
        self.refusing = False
        self.sent = 0  # client -> server bytes relayed
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._running = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def start(self) -> TcpProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._running = False
        self._listener.close()
        self.drop()

    def cut(self) -> None:
        self.refusing = True
        self.drop()

    def restore(self) -> None:
        self.refusing = False

    def drop(self) -> None:
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while self._running:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets |= {client, server}
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, upstream: bool) -> None:
        due = 0.0  # when the bytes relayed so far may have left, at the rate
        try:
            while True:
                data = source.recv(BLOCK)
                if not data:
                    break
                if upstream and self.rate:
                    now = time.monotonic()
                    due = max(due, now) + len(data) / self.rate
                    if due > now:
                        time.sleep(due - now)
                target.sendall(data)
                if upstream:
                    self.sent += len(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            with self._lock:
                self._sockets -= {source, target}
