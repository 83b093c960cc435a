"""The upload page's JavaScript bundle (gateway/static/upload.js), built by the Makefile from
gateway/web (lockfile-pinned npm packages, esbuild). It is not committed: the build writes
gateway/static/upload.manifest.json with the digest of the sources it was built from, and the
gateway serves the bundle only while that digest matches the sources beside it. A stale or
missing bundle is logged loudly and the page falls back to its plain form (which works without
JavaScript), so a forgotten rebuild can never serve old code.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
PACKAGE = Path(__file__).resolve().parents[1]  # gateway/
SOURCES = PACKAGE / "web"
STATIC = PACKAGE / "static"
MANIFEST = STATIC / "upload.manifest.json"
BUNDLE = STATIC / "upload.js"
SERVICE_WORKER = STATIC / "upload-sw.js"  # served as /upload/sw.js (pages.py)


@dataclass(frozen=True)
class Bundle:
    fresh: bool
    url: str  # with the bundle's digest, so a browser never runs an old one from its cache
    why: str = ""


def sources_digest(root: Path = SOURCES) -> str:
    """The digest gateway/web/sources.mjs computes: SHA-256 over "path<TAB>sha256<LF>" lines of
    package.json, package-lock.json, build.mjs and every file under src/ and outbox/ (the
    browser outbox library), sorted by path."""
    files = [root / "package.json", root / "package-lock.json", root / "build.mjs"]
    for folder in ("src", "outbox"):
        files += [p for p in (root / folder).rglob("*") if p.is_file()]
    lines = sorted(
        f"{p.relative_to(root).as_posix()}\t{hashlib.sha256(p.read_bytes()).hexdigest()}\n"
        for p in files
    )
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def check(root: Path = SOURCES, manifest: Path = MANIFEST, bundle_file: Path = BUNDLE) -> Bundle:
    try:
        built = json.loads(manifest.read_text())
        content = bundle_file.read_bytes()
    except (OSError, ValueError):
        return Bundle(False, "", "the bundle is not built: run `make bundle`")
    digest = hashlib.sha256(content).hexdigest()
    if built.get("bundle") != digest:
        return Bundle(False, "", "upload.js is not the file the manifest describes")
    if root.is_dir() and built.get("sources") != sources_digest(root):
        return Bundle(False, "", "gateway/web changed since the bundle was built: `make bundle`")
    return Bundle(True, f"/static/upload.js?v={digest[:16]}")


def service_worker(manifest: Path = MANIFEST, worker: Path = SERVICE_WORKER) -> bytes | None:
    """The page's service worker when it is the one the manifest describes (built with the
    bundle, so fresh when the bundle is), else None."""
    try:
        built = json.loads(manifest.read_text())
        content = worker.read_bytes()
    except (OSError, ValueError):
        return None
    if built.get("serviceWorker") != hashlib.sha256(content).hexdigest():
        return None
    return content


@functools.cache
def bundle() -> Bundle:
    """Checked once per process."""
    state = check()
    if not state.fresh:
        log.error("upload page without its script: %s", state.why)
    return state
