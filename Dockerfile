# upload-gateway: gunicorn (gevent) serving the Flask app; put nginx/gateway.conf in front.

# The upload page's script: built from the lockfile (gateway/web), never copied from a work tree.
FROM node:20-bookworm-slim AS bundle
WORKDIR /web
COPY gateway/web/package.json gateway/web/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY gateway/web ./
RUN npm run build

FROM python:3.11-slim AS base

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
COPY --from=bundle --chown=root:root /static/upload.js /static/upload.manifest.json ./gateway/static/

USER gateway
EXPOSE 8000
# Open files: gunicorn.conf.py raises its soft limit to what GATEWAY_WORKER_CONNECTIONS needs
# (2 per connection + 256: 20,256 for the default 10,000 per worker) within the hard limit the
# container gets, and takes fewer connections if that is lower. An image cannot set it: run
# with --ulimit nofile=65536:65536 (docs/deployment.md, "Many connections").
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"]
# SIGTERM starts the graceful stop (docs/deployment.md): give it time, e.g. docker stop -t 90.
STOPSIGNAL SIGTERM
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
