"""Shared fixtures: a moto server process, a Ceph cluster, settings per backend, an app and its
client."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Property tests: a few hundred cases each in the suite; HYPOTHESIS_PROFILE=fuzz for a long run.
_PROPERTY = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("suite", max_examples=300, **_PROPERTY)
settings.register_profile("fuzz", max_examples=50_000, **_PROPERTY)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway import create_app  # noqa: E402
from gateway.config import Settings  # noqa: E402
from gateway.services import Services  # noqa: E402

from support import JWT_SECRET, env_for_aws, start_moto_server, stop, unique  # noqa: E402

os.environ.update(env_for_aws())


SLOW_FIXTURES = {
    "moto_url",
    "serial_moto_url",
    "ceph_url",
    "ceph_cluster",
    "embedded_stack",
    "s3_stack",
    "clamd_url",
}


# Parameter values that name a server-backed store: a test parametrised with one of them (under
# any parameter name: backend, store, records, queue, stack) fetches its server at run time.
REMOTE_PARAMS = {"s3", "s3+dynamodb", "ceph", "dynamodb", "sqs"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark what needs real servers (moto, Ceph, gunicorn, nginx) as slow: `make test-fast` skips
    it."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        remote = params.get("backend", "local") != "local" or any(
            isinstance(value, str) and value in REMOTE_PARAMS for value in params.values()
        )
        if remote or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    # The image's build is the longest setup of one file (minutes on a fresh machine): collected
    # first, `-n 2 --dist loadfile` starts it first and runs the other files beside it.
    items.sort(key=lambda item: item.path.name not in FIRST_FILES)


FIRST_FILES = {"test_image.py"}


@pytest.fixture(scope="session")
def moto_url():
    """A moto server process on a free loopback port, shared by the session."""
    proc, url = start_moto_server()
    yield url
    stop(proc)


@pytest.fixture(scope="session")
def serial_moto_url():
    """A moto server that handles one request at a time: DynamoDB's transaction isolation for
    the concurrency tests (tests/serial_moto.py)."""
    proc, url = start_moto_server(serial=True)
    yield url
    stop(proc)


@pytest.fixture(scope="session")
def ceph_cluster(tmp_path_factory):
    """A throwaway single-node Ceph cluster with its S3 gateway (radosgw), shared by the session:
    the second S3 the store suites run on (tests/ceph_harness.py). Its user has the suite's AWS
    keys; ``url`` is plain HTTP, ``https_url`` the same gateway over TLS (CA: ``ca_file``)."""
    from ceph_harness import remove, start_ceph

    folder = tmp_path_factory.mktemp("ceph")
    cluster = start_ceph(folder)
    yield cluster
    cluster.stop()
    remove(folder)


@pytest.fixture(scope="session")
def ceph_url(ceph_cluster):
    """Ceph's S3 endpoint: ``make_settings(tmp_path, backend="ceph", ceph_url=ceph_url)`` is a
    gateway on Ceph (``Services(settings)`` and ``provision()`` as ``app`` below)."""
    return ceph_cluster.url


@pytest.fixture(scope="session")
def clamd_url(tmp_path_factory):
    """A real clamd on a free loopback port with the tests' own signatures, for the session."""
    from clamd_harness import start_clamd

    proc, url = start_clamd(tmp_path_factory.mktemp("clamd"))
    yield url
    stop(proc)


def make_settings(
    tmp_path: Path,
    *,
    backend: str = "local",
    moto_url: str | None = None,
    ceph_url: str | None = None,
    **overrides,
) -> Settings:
    """Settings for ``backend``: "local" (files, SQLite), "s3" (moto's S3), "s3+dynamodb" (moto's
    S3 and DynamoDB) or "ceph" (Ceph's S3, records in SQLite)."""
    values = {
        "jwt_secret": JWT_SECRET,
        "orphan_journal": str(tmp_path / "orphans.jsonl"),
        "storage_url": str(tmp_path / "media"),
        "records_url": f"sqlite:///{tmp_path / 'records.db'}",
        "queue_url": f"sqlite:///{tmp_path / 'queue.db'}",
    }
    if backend in ("s3", "s3+dynamodb"):
        values.update(storage_url=f"s3://{unique('bucket')}/uploads", s3_endpoint_url=moto_url)
    if backend == "s3+dynamodb":
        values.update(records_url=f"dynamodb://{unique('media')}", dynamodb_endpoint_url=moto_url)
    if backend == "ceph":
        values.update(storage_url=f"s3://{unique('bucket')}/uploads", s3_endpoint_url=ceph_url)
    values.update(overrides)
    return Settings(**values).replace()


def init_stores(svc: Services) -> None:
    svc.provision()


@pytest.fixture(params=["local", "s3", "s3+dynamodb"])
def backend(request):
    return request.param


def backend_settings(request: pytest.FixtureRequest, tmp_path: Path, backend: str, **overrides):
    """make_settings for ``backend``, starting the server it needs (moto or Ceph) if not yet up."""
    if backend == "ceph":
        ceph = request.getfixturevalue("ceph_url")
        return make_settings(tmp_path, backend=backend, ceph_url=ceph, **overrides)
    moto = request.getfixturevalue("moto_url") if backend != "local" else None
    return make_settings(tmp_path, backend=backend, moto_url=moto, **overrides)


def also_on_ceph(*backends: str) -> pytest.MarkDecorator:
    """Run a test on ``backends`` and on Ceph: for the tests that exercise what the store does
    (the others stay on moto alone, for the suite's time)."""
    return pytest.mark.parametrize("backend", [*backends, "ceph"])


@pytest.fixture
def settings(tmp_path, backend, request):
    return backend_settings(request, tmp_path, backend)


@pytest.fixture
def app(settings):
    app = create_app(settings)
    app.config["TESTING"] = True
    init_stores(app.extensions["gateway"])
    return app


@pytest.fixture
def svc(app) -> Services:
    return app.extensions["gateway"]


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def token(app):
    def make(sub: str = "alice", **kwargs) -> str:
        from gateway.http.auth import mint_token

        with app.app_context():
            return mint_token(sub, **kwargs)

    return make


@pytest.fixture
def auth(token):
    return {"Authorization": f"Bearer {token()}"}
