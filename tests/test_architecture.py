"""The seams hold: the domain layer is Flask-free, and every error code is documented."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from gateway import errors

from support import ROOT

DOMAIN = [
    "gateway.services",
    "gateway.uploads",
    "gateway.direct",
    "gateway.ingest",
    "gateway.lifecycle",
    "gateway.events",
    "gateway.records",
    "gateway.records.sqlite",
    "gateway.records.dynamodb",
    "gateway.storage",
    "gateway.storage.local",
    "gateway.storage.s3",
    "gateway.storage.s3_direct",
    "gateway.sweeper",
    "gateway.principal",
    "gateway.formdata",
    "gateway.idempotency",
    "gateway.media_service",
    "gateway.bodies",
    "gateway.errors",
    "gateway.tus",
    "gateway.storage.chunks",
    "gateway.storage.s3_chunks",
    "gateway.pipeline",
    "gateway.worker",
    "gateway.queue",
    "gateway.queue.sqlite",
    "gateway.queue.sqs",
    "gateway.derive",
    "gateway.sandbox",
    "gateway.scanner",
    "gateway.webhooks",
    "gateway.sqlite_db",
]


def test_the_domain_layer_does_not_import_flask():
    code = (
        f"import sys; import {', '.join(DOMAIN)}; "
        "print(sorted(m for m in sys.modules if m.split('.')[0].startswith('flask')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"
    # ...and the check can fail: the app factory does import Flask.
    app = subprocess.run(
        [sys.executable, "-c", "import sys, gateway.app; print('flask' in sys.modules)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert app.stdout.strip() == "True"


def test_the_web_app_does_not_load_the_processing_libraries():
    """Pillow and the webhook signer are the worker's; a web worker's memory stays without them
    (it queues webhook deliveries, it never sends one)."""
    probe = "import sys, {}; print(sorted({{'PIL', 'standardwebhooks'}} & set(sys.modules)))"
    env = {
        **os.environ,
        "GATEWAY_JWT_SECRET": "x" * 48,
        "GATEWAY_WEBHOOK_URL": "http://127.0.0.1:9/hooks",
        "GATEWAY_WEBHOOK_SECRET": "whsec_" + "A" * 32,
    }
    web = subprocess.run(
        [sys.executable, "-c", probe.format("wsgi")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert web.stdout.strip() == "[]"
    worker = subprocess.run(  # ...and the check can fail: the pipeline and deliveries do
        [
            sys.executable,
            "-c",
            probe.format("wsgi") + "; svc = wsgi.app.extensions['gateway']; "
            "svc.pipeline; svc.deliveries; "
            "print(sorted({'PIL', 'standardwebhooks'} & set(sys.modules)))",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert worker.stdout.strip().splitlines()[-1] == "['PIL', 'standardwebhooks']"


def _documented_error_codes() -> set[str]:
    text = (ROOT / "docs" / "errors.md").read_text()
    table = text[text.index("| code |") :].split("\n\n", 1)[0]
    first_cells = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    return set(re.findall(r"`([a-z0-9_]+)`", "\n".join(first_cells)))


def test_every_declared_error_code_is_in_the_docs_table_and_only_those():
    assert _documented_error_codes() == set(errors.CATALOGUE)


def test_error_codes_are_unique_and_statuses_are_http_errors():
    assert len({cls.code for cls in errors.CATALOGUE.values()}) == len(errors.CATALOGUE)
    for code, cls in errors.CATALOGUE.items():
        assert cls.code == code and 400 <= cls.status <= 599, code
        assert cls().body("r")["error"] == {"code": code, "message": cls.message}


def test_nginx_renders_only_declared_codes():
    config = (ROOT / "nginx" / "gateway.conf").read_text()
    codes = set(re.findall(r'"code":"([a-z0-9_]+)"', config))
    assert codes == {"request_rejected", "too_large", "upstream_unavailable", "not_found"}
    assert codes <= set(errors.CATALOGUE)


def test_every_setting_is_in_the_docs_configuration_table():
    import dataclasses

    from gateway.config import Settings, _env_name

    text = (ROOT / "docs" / "settings.md").read_text()
    table = text[text.index("| variable |") :].split("\n\n", 1)[0]
    documented = set(re.findall(r"`(GATEWAY_[A-Z0-9_]+)`", table))
    declared = {_env_name(f.name) for f in dataclasses.fields(Settings)}
    assert declared - documented == set()


def test_the_outbox_client_imports_nothing_of_the_server():
    """The client talks to the gateway over HTTP only: none of the gateway's own modules, no
    Flask, no boto3 (a field app installs it without the server's dependencies)."""
    code = (
        "import sys, gateway.outbox.cli, gateway.outbox.sync; "
        "print(sorted(m for m in sys.modules if m.startswith(('gateway', 'flask', 'boto'))"
        " and not m.startswith('gateway.outbox')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "['gateway']"  # the package itself, which imports nothing


def test_the_embedded_web_app_does_not_load_boto3():
    """Local storage and SQLite need no AWS SDK: ~10 MiB less in every web worker."""
    probe = "import sys, wsgi; print(sorted({'boto3', 'botocore'} & set(sys.modules)))"
    env = {**os.environ, "GATEWAY_JWT_SECRET": "x" * 48}
    env = {
        k: v for k, v in env.items() if not k.startswith("GATEWAY_") or k == "GATEWAY_JWT_SECRET"
    }
    embedded = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert embedded.stdout.strip().splitlines()[-1] == "[]"
    s3 = subprocess.run(  # ...and the check can fail: S3 storage does load it
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={**env, "GATEWAY_STORAGE_URL": "s3://some-bucket/uploads"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert s3.stdout.strip().splitlines()[-1] == "['boto3', 'botocore']"
