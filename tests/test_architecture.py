"""The seams hold: each folder imports only the layers below it, the domain is Flask-free, the
offline client is apart, and every error code and setting is documented."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

from gateway import errors

from support import ROOT

# The layers, lowest first: a module may import its own folder and any folder before it. The root
# holds the base every layer uses (errors, settings, metrics, the SQLite helper) and, on top, the
# composition root (services), the app factory, the commands and the image's health check.
BASE = {"gateway.errors", "gateway.config", "gateway.metrics", "gateway.sqlite_db"}
TOP = {"gateway", "gateway.app", "gateway.cli", "gateway.services", "gateway.healthcheck"}
LAYERS = ["base", "storage", "queue", "media", "uploads", "processing", "http", "top"]
# Beyond the order: the views reach the services through the composition root's ``Services``.
ALSO_ALLOWED = {("http", "gateway.services")}
FLASK_FREE = {"base", "storage", "queue", "media", "uploads", "processing"}


def _layer(module: str) -> str:
    if module in BASE:
        return "base"
    if module in TOP:
        return "top"
    layer = module.split(".")[1]
    assert layer in LAYERS, f"{module} is in no layer: add its folder to LAYERS"
    return layer


def _modules() -> dict[str, Path]:
    found = {}
    for path in (ROOT / "gateway").rglob("*.py"):
        if "node_modules" in path.parts:
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Which of the gateway's modules each one imports (``from gateway.x import y`` names y
    where y is a module, else x)."""
    graph = {}
    for name, path in modules.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{name}: relative import (absolute ones show the layers)"
                subs = {f"{node.module}.{alias.name}" for alias in node.names}
                imported |= (subs & modules.keys()) or {node.module or ""}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, imported in sorted(graph.items()):
        rank = LAYERS.index(_layer(module))
        for other in sorted(imported):
            allowed = LAYERS.index(_layer(other)) <= rank or (_layer(module), other) in ALSO_ALLOWED
            if not allowed:
                found.append(f"{module} -> {other}")
    return found


def test_each_folder_imports_only_its_own_and_the_layers_below():
    graph = _imports(_modules())
    assert layer_violations(graph) == []
    # ...and the check can fail: storage reaching up into the HTTP edge is one.
    graph["gateway.storage.s3"].add("gateway.http.auth")
    assert layer_violations(graph) == ["gateway.storage.s3 -> gateway.http.auth"]


def test_the_root_holds_the_base_and_the_composition_root_only():
    root = {path.stem for path in (ROOT / "gateway").glob("*.py")}
    assert {f"gateway.{stem}" for stem in root} - {"gateway.__init__"} == (BASE | TOP) - {"gateway"}
    packages = {path.parent.name for path in (ROOT / "gateway").glob("*/__init__.py")}
    assert packages == set(LAYERS) - {"base", "top"}


def test_the_domain_layers_do_not_import_flask():
    domain = sorted(m for m in _modules() if _layer(m) in FLASK_FREE)
    code = (
        f"import sys; import {', '.join(domain)}; "
        "print(sorted(m for m in sys.modules if m.split('.')[0].startswith('flask')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"
    assert "gateway.uploads.tus" in domain and "gateway.processing.worker" in domain
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
    probe = (
        "import sys, {}; "
        "print(sorted(m for m in sys.modules if m.startswith(('gateway', 'flask', 'boto'))))"
    )
    client = subprocess.run(
        [sys.executable, "-c", probe.format("outbox.cli, outbox.sync, outbox.advise")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert client.stdout.strip() == "[]"
    server = subprocess.run(  # ...and the check can fail: the server's settings are the gateway's
        [sys.executable, "-c", probe.format("gateway.config")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert server.stdout.strip() == "['gateway', 'gateway.config']"


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
