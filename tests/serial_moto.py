"""moto's server, handling one request at a time: ``python tests/serial_moto.py -H host -p port``.

moto's DynamoDB takes no lock across concurrent requests: two transactions can both pass their
conditions and both write, which DynamoDB itself never allows (transactions are serializable).
Tests that prove concurrent writes cannot overshoot a limit or lose a counter increment run
against this server, so that the isolation they rely on is DynamoDB's, not moto's race. The
gateway's own requests still run concurrently; only moto's handling of each is serialized.
"""

from __future__ import annotations

import threading

from moto import server

_one_at_a_time = threading.Lock()
_handle = server.DomainDispatcherApplication.__call__


def _serialized(self, environ, start_response):  # type: ignore[no-untyped-def]
    with _one_at_a_time:
        return list(_handle(self, environ, start_response))


server.DomainDispatcherApplication.__call__ = _serialized  # type: ignore[method-assign]

if __name__ == "__main__":
    server.main()
