"""gateway/http/dns.py: IP literals resolved in place, names handed to gevent's thread pool."""

from __future__ import annotations

import os
import runpy
import socket
from types import SimpleNamespace

import pytest

from gateway.http.dns import Resolver

from support import JWT_SECRET, ROOT


class RecordingPool:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def apply(self, function, args, kwargs=None):
        self.calls.append(args)
        return function(*args, **(kwargs or {}))


@pytest.fixture
def resolver():
    return Resolver(hub=SimpleNamespace(threadpool=RecordingPool(), NOT_ERROR=()))


@pytest.mark.parametrize(
    "host,family,address",
    [("127.0.0.1", socket.AF_INET, ("127.0.0.1", 9000)), ("::1", socket.AF_INET6, ("::1", 9000))],
)
def test_an_ip_literal_is_answered_without_the_thread_pool(resolver, host, family, address):
    answer = resolver.getaddrinfo(host, 9000, 0, socket.SOCK_STREAM)
    assert [(a[0], a[4][:2]) for a in answer] == [(family, address)]
    assert resolver.pool.calls == []


def test_a_name_goes_to_the_thread_pool_with_the_callers_flags(resolver):
    answer = resolver.getaddrinfo("localhost", 9000, socket.AF_INET, socket.SOCK_STREAM)
    assert ("127.0.0.1", 9000) in [a[4] for a in answer]
    assert resolver.pool.calls == [("localhost", 9000, socket.AF_INET, socket.SOCK_STREAM, 0, 0)]


def test_a_name_that_does_not_resolve_fails_as_the_system_resolver_fails(resolver):
    with pytest.raises(socket.gaierror):
        resolver.getaddrinfo("no-such-host.invalid", 80)
    assert len(resolver.pool.calls) == 1


@pytest.mark.parametrize("preset", [None, "ares"])
def test_gunicorn_selects_it_unless_the_operator_chose_a_resolver(monkeypatch, preset):
    monkeypatch.setenv("GATEWAY_JWT_SECRET", JWT_SECRET)
    if preset is None:
        monkeypatch.delenv("GEVENT_RESOLVER", raising=False)
    else:
        monkeypatch.setenv("GEVENT_RESOLVER", preset)
    runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert os.environ["GEVENT_RESOLVER"] == (preset or "gateway.http.dns.Resolver")
