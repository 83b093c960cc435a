"""``python -m gateway.outbox``: the ``outbox`` command."""

from .cli import run

run()
