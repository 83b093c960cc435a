"""``python -m outbox``: the ``outbox`` command."""

from outbox.cli import run

run()
