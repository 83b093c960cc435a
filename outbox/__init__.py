"""The offline-first client: a durable outbox that queues uploads and syncs them exactly once.

A field app (or a person with the ``outbox`` CLI) pushes files while offline; each push is one
*item*: its files (copied into the outbox, so a later change to the original is not what gets
sent), the project, text fields, linked steps (before and after the upload: a chain), and its own
Idempotency-Key. ``sync`` runs the steps before the upload, sends small files as one form POST
carrying that key and big files over tus (resuming from the stored upload URL), then runs the
steps after it with the stored keys and URLs, and the earlier steps' captures, filled in.

Modules: ``store`` (the SQLite outbox and its states), ``transport`` (the gateway's HTTP API),
``chain`` (the chain model: steps, placeholders, captures), ``steps`` (sending them), ``sync``
(scheduling, retries, backoff), ``report`` (terminal progress and JSON lines), ``advise`` (what a
re-encode would save), ``cli`` (click).
It talks to the gateway over HTTP only and imports nothing of the server side.
"""
