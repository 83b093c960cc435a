# upload-gateway: gunicorn (gevent) serving the Flask app; put nginx/gateway.conf in front.
# Build, run flags and size: docs/deployment.md.

# The base images; a machine without a registry passes local stand-ins (tests/docker_harness.py).
ARG PYTHON_IMAGE=python:3.11-slim
ARG NODE_IMAGE=node:20-bookworm-slim

# The upload page's script: built from the lockfile (gateway/web), never copied from a work tree.
FROM ${NODE_IMAGE} AS bundle
WORKDIR /web
COPY gateway/web/package.json gateway/web/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY gateway/web ./
# The service worker's precache list names the stylesheet with its digest.
COPY gateway/static/upload.css /static/upload.css
RUN npm run build

FROM ${PYTHON_IMAGE} AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GATEWAY_BIND=0.0.0.0:8000 \
    GATEWAY_TRUSTED_PROXIES=1

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin gateway \
    && mkdir -p /app/var && chown gateway /app/var

COPY --chown=root:root wsgi.py gunicorn.conf.py ./
COPY --chown=root:root gateway ./gateway
COPY --from=bundle --chown=root:root /static/upload.js /static/upload-sw.js /static/upload.manifest.json ./gateway/static/

# SQLite, the queue, local media and the orphan journal (the defaults under var/): the only place
# the gateway writes, besides a tmpfs on /tmp (docker run --read-only --tmpfs /tmp).
VOLUME /app/var

USER gateway
EXPOSE 8000
# Open files: gunicorn.conf.py raises its soft limit to what GATEWAY_WORKER_CONNECTIONS needs
# (2 per connection + 256: 20,256 for the default 10,000 per worker) within the hard limit the
# container gets, and takes fewer connections if that is lower. An image cannot set it: run
# with --ulimit nofile=65536:65536 (docs/deployment.md, "Many connections").
# gunicorn: /healthz on GATEWAY_BIND; the worker: /metrics on GATEWAY_WORKER_METRICS_BIND if set
# (otherwise healthy while it runs); other commands: healthy (gateway/healthcheck.py).
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-m", "gateway.healthcheck"]
# SIGTERM starts the graceful stop (docs/deployment.md): the stop timeout must cover
# GATEWAY_SHUTDOWN_DELAY + GATEWAY_SHUTDOWN_UPLOAD_GRACE + 15 s, so run with --stop-timeout 90
# (docker stop's 10 s default would SIGKILL uploads in flight).
STOPSIGNAL SIGTERM
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
