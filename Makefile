# upload-gateway: `make run` (embedded defaults, no AWS) and `make test` (installs and passes).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BIND   ?= 127.0.0.1:8000
DEV_SECRET := var/dev-jwt-secret
DEV_ENV = GATEWAY_JWT_SECRET="$$(cat $(DEV_SECRET))"

LINTED := gateway outbox tests bench .ci wsgi.py gunicorn.conf.py

.PHONY: run token lint lint-js test test-fast mutation bench clean bundle node docker-tools image

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

# The offline-first client's command (outbox), runnable from anywhere.
$(BIN)/outbox: Makefile | $(BIN)/python
	printf '#!/bin/sh\nPYTHONPATH="%s$${PYTHONPATH:+:$$PYTHONPATH}" exec "%s" -m outbox "$$@"\n' \
		"$(CURDIR)" "$(CURDIR)/$(BIN)/python" > $@
	chmod +x $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.runtime

node:
	@command -v npm >/dev/null 2>&1 || ($(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm)

# The upload page's script, from lockfile-pinned packages (gateway/web) bundled by esbuild; not
# committed. Rebuilt whenever its sources change; the gateway refuses a stale one (web_bundle.py).
BUNDLE := gateway/static/upload.js
WEB_SOURCES := gateway/web/package.json gateway/web/package-lock.json gateway/web/build.mjs \
	gateway/web/sources.mjs $(shell find gateway/web/src gateway/web/outbox -type f 2>/dev/null)
$(BUNDLE): $(WEB_SOURCES) | node
	cd gateway/web && npm ci --no-audit --no-fund --loglevel=error && npm run build
	touch $@

bundle: $(BUNDLE)

# The browser outbox's JSDoc types, and its declared API (outbox/index.d.ts) against its code,
# checked by TypeScript (gateway/web/tsconfig.json; installed by the bundle's npm ci).
lint-js: $(BUNDLE)
	cd gateway/web && npm run --silent typecheck

$(DEV_SECRET):
	mkdir -p var
	$(BIN)/python -c "import secrets; print(secrets.token_urlsafe(48))" > $@
	chmod 600 $@

# Local storage in var/media, SQLite in var/gateway.db; a dev JWT secret in var/.
run: $(VENV)/.runtime $(BIN)/outbox $(BUNDLE) $(DEV_SECRET)
	$(DEV_ENV) $(BIN)/flask --app wsgi init
	@echo "Gateway on http://$(BIND) with one processing worker. Get a token:  make token"
	@echo "Upload page:  http://$(BIND)/upload  (sign in with that token)"
	@echo "Upload:  curl -H \"Authorization: Bearer \$$(make -s token)\" -F projectId=demo -F file=@photo.jpg http://$(BIND)/api/upload"
	@# The worker runs beside gunicorn and stops with it (Ctrl-C or SIGTERM stops both).
	$(DEV_ENV) sh -c '$(BIN)/flask --app wsgi worker & worker=$$!; \
		trap "kill $$worker 2>/dev/null" EXIT INT TERM; \
		GATEWAY_BIND=$(BIND) $(BIN)/gunicorn -c gunicorn.conf.py wsgi:app'

token: $(VENV)/.runtime $(DEV_SECRET)
	@$(DEV_ENV) $(BIN)/flask --app wsgi token --sub dev

# The gate: lint, format, types (Python's, and the browser outbox's below).
lint: $(VENV)/.dev lint-js
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

# Debian's docker.io (dockerd 20.10 and its client) and debootstrap (base images where no registry
# serves them): tests/docker_harness.py starts a private dockerd with them.
docker-tools:
	@[ -x /usr/sbin/dockerd ] && [ -x /usr/sbin/debootstrap ] || ($(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		docker.io debootstrap)

# The image (upload-gateway:local) built by a private dockerd as the tests build it
# (docs/deployment.md); with a registry and Docker of your own, `docker build .` is the same.
image: $(VENV)/.dev docker-tools node
	$(BIN)/python tests/docker_harness.py build

# What the tests drive: Debian's nginx, curl, clamd, chromium, ffmpeg (the audio tests'
# independent encoder) and Ceph (mon, OSD, radosgw: the second S3, tests/ceph_harness.py), Node's
# tus clients and reference server (tests/node, lockfile-pinned), Docker (tests/test_image.py
# builds and runs the image); the gate, then the suite in two processes.
test: $(VENV)/.dev $(BIN)/outbox $(BUNDLE) lint docker-tools
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || \
		($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nginx-light)
	@command -v curl >/dev/null 2>&1 || \
		($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq curl)
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	@[ -x /usr/sbin/clamd ] || ($(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq --no-install-recommends clamav-daemon)
	@command -v chromium >/dev/null 2>&1 || ($(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	@command -v ffmpeg >/dev/null 2>&1 || ($(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg)
	@[ -x /usr/bin/ceph-mon ] && [ -x /usr/bin/ceph-osd ] && [ -x /usr/bin/radosgw ] || \
		($(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq --no-install-recommends \
		ceph-mon ceph-osd radosgw ceph-common)
	$(BIN)/pytest -n 2 --dist loadfile --durations=25

# The fast lane: no servers (moto, gunicorn, nginx), about half a minute.
test-fast: $(VENV)/.dev $(BUNDLE)
	$(BIN)/pytest -m "not slow"

# Mutation testing of the core modules (pyproject.toml [tool.mutmut]); not in CI: a full run
# takes tens of minutes. MUTANTS="gateway.media.naming*" narrows it; scores per module at the end.
MUTANTS ?=
mutation: $(VENV)/.dev
	rm -rf mutants
	$(BIN)/mutmut run --max-children 2 $(MUTANTS)
	$(BIN)/python .ci/mutation_scores.py

# Prints PASS/MISS per target (run.py exits 1 on a miss; direct.py runs regardless). bench/multer
# is the Node anchor (express + multer + multer-s3), lockfile-pinned.
bench: $(VENV)/.dev
	@command -v npm >/dev/null 2>&1 || ($(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm)
	cd bench/multer && npm ci --no-audit --no-fund --loglevel=error
	-$(BIN)/python bench/run.py
	-$(BIN)/python bench/tus.py
	@command -v ffmpeg >/dev/null 2>&1 || ($(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg)
	-$(BIN)/python bench/audio.py
	$(BIN)/python bench/direct.py

clean:
	rm -rf $(VENV) var .pytest_cache
	$(SUDO) rm -rf build
