"""Name resolution in the gevent workers: IP literals answered in place, names on threads.

gevent's default resolver hands every getaddrinfo to its native thread pool, an IP address
included, though nothing needs looking up: an S3 endpoint given as an address (MinIO at
``http://10.0.0.5:9000``, moto on 127.0.0.1 in the tests and the benchmark). A store that
closes its connections then costs a thread handoff per request (measured: about 0.5 ms of CPU
per 1 MiB upload, a tenth of the whole, bench (c)). With ``AI_NUMERICHOST`` the system resolver
never touches the network, so a literal is answered at once; anything else fails that call
immediately and goes to the thread pool as before. gunicorn.conf.py selects this class through
gevent's ``GEVENT_RESOLVER`` (an operator's own choice there wins).
"""

from __future__ import annotations

import _socket
from typing import Any

from gevent.resolver.thread import Resolver as ThreadResolver


class Resolver(ThreadResolver):  # type: ignore[misc]  # gevent ships no type hints
    def getaddrinfo(
        self, host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> list[Any]:
        try:
            return _socket.getaddrinfo(
                host, port, family, type, proto, flags | _socket.AI_NUMERICHOST
            )
        except _socket.gaierror:
            return super().getaddrinfo(host, port, family, type, proto, flags)  # type: ignore[no-any-return]
