"""The upload page's script is served only when it was built from the sources beside it."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from gateway.http import web_bundle


@pytest.fixture
def built(tmp_path):
    """A copy of gateway/web's sources and a bundle built from them (as the Makefile does)."""
    web = tmp_path / "web"
    (web / "src").mkdir(parents=True)
    (web / "package.json").write_text('{"name": "x"}')
    (web / "package-lock.json").write_text("{}")
    (web / "build.mjs").write_text("build()")
    (web / "src" / "upload.js").write_text("console.log(1)")
    (web / "src" / "deep").mkdir()
    (web / "src" / "deep" / "part.js").write_text("export const a = 1")
    static = tmp_path / "static"
    static.mkdir()
    bundle = static / "upload.js"
    bundle.write_text("bundled")
    manifest = static / "upload.manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "sources": web_bundle.sources_digest(web),
                "bundle": hashlib.sha256(b"bundled").hexdigest(),
            }
        )
    )
    return web, manifest, bundle


def test_the_sources_digest_is_over_sorted_path_and_content_lines(built):
    web, _, _ = built
    lines = "".join(
        f"{path}\t{hashlib.sha256(content).hexdigest()}\n"
        for path, content in sorted(
            [
                ("package-lock.json", b"{}"),
                ("build.mjs", b"build()"),
                ("package.json", b'{"name": "x"}'),
                ("src/deep/part.js", b"export const a = 1"),
                ("src/upload.js", b"console.log(1)"),
            ]
        )
    )
    assert web_bundle.sources_digest(web) == hashlib.sha256(lines.encode()).hexdigest()


def test_a_bundle_built_from_these_sources_is_served_with_its_digest_in_the_url(built):
    state = web_bundle.check(*built)
    assert state.fresh
    assert state.url == f"/static/upload.js?v={hashlib.sha256(b'bundled').hexdigest()[:16]}"


CHANGED = "gateway/web changed since the bundle was built: `make bundle`"
NOT_BUILT = "the bundle is not built: run `make bundle`"
EDITED = "upload.js is not the file the manifest describes"


@pytest.mark.parametrize(
    "change, why",
    [
        (lambda web, m, b: (web / "src" / "upload.js").write_text("console.log(2)"), CHANGED),
        (lambda web, m, b: (web / "src" / "new.js").write_text(""), CHANGED),
        (lambda web, m, b: (web / "package-lock.json").write_text('{"v": 2}'), CHANGED),
        (lambda web, m, b: (web / "build.mjs").write_text("build({minify: false})"), CHANGED),
        (
            lambda web, m, b: (web / "outbox").mkdir() or (web / "outbox" / "a.js").write_text(""),
            CHANGED,
        ),
        (lambda web, m, b: b.write_text("edited by hand"), EDITED),
        (lambda web, m, b: b.unlink(), NOT_BUILT),
        (lambda web, m, b: m.unlink(), NOT_BUILT),
        (lambda web, m, b: m.write_text("{"), NOT_BUILT),
    ],
)
def test_a_stale_or_missing_bundle_is_not_served(built, change, why):
    change(*built)
    state = web_bundle.check(*built)
    assert state == web_bundle.Bundle(False, "", why)
    assert state.fresh is False


def test_without_the_sources_beside_it_the_bundle_is_trusted_as_built(built):
    web, manifest, bundle = built
    shutil.rmtree(web)
    assert web_bundle.check(web, manifest, bundle).fresh


def test_the_bundle_in_this_work_tree_is_fresh():
    """`make test` builds it first; a forgotten rebuild fails here, not in a user's browser."""
    state = web_bundle.check()
    assert state.fresh, state.why


def test_the_service_worker_is_served_only_as_the_manifest_describes_it(built):
    _, manifest, bundle = built
    worker = bundle.parent / "upload-sw.js"
    worker.write_text("self.addEventListener('sync', () => {})")
    described = json.loads(manifest.read_text())
    assert web_bundle.service_worker(manifest, worker) is None  # not in the manifest
    described["serviceWorker"] = hashlib.sha256(worker.read_bytes()).hexdigest()
    manifest.write_text(json.dumps(described))
    assert web_bundle.service_worker(manifest, worker) == worker.read_bytes()
    worker.write_text("edited by hand")
    assert web_bundle.service_worker(manifest, worker) is None
    worker.unlink()
    assert web_bundle.service_worker(manifest, worker) is None


@pytest.mark.parametrize("backend", ["local"])
def test_the_worker_is_served_under_upload_with_that_scope_allowed(client):
    """/upload/sw.js: scope /upload allowed, revalidated on every check (a deploy replaces it)."""
    answer = client.get("/upload/sw.js")
    assert answer.status_code == 200
    assert answer.headers["Service-Worker-Allowed"] == "/upload"
    assert answer.headers["Cache-Control"] == "no-cache"
    assert answer.mimetype == "text/javascript"
    assert answer.data == web_bundle.SERVICE_WORKER.read_bytes()
