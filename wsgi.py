"""gunicorn entry point: ``gunicorn -c gunicorn.conf.py wsgi:app``; also ``flask --app wsgi``."""

import sys

from gateway import create_app
from gateway.config import ConfigError

try:
    app = create_app()
except ConfigError as exc:  # one line naming the variable, not a traceback
    print(f"upload-gateway: configuration error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None
