"""``python -m gateway.outbox``: the ``outbox`` command."""

from gateway.outbox.cli import run

run()
