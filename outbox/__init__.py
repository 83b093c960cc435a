"""The offline-first client: a durable outbox that queues uploads and syncs them exactly once.

A field app (or a person with the ``outbox`` CLI) pushes files while offline; each push is one
*item*: its files (copied into the outbox, so a later change to the original is not what gets
sent), the project, text fields, follow-up steps, and its own Idempotency-Key. ``sync`` sends
small files as one form POST carrying that key and big files over tus (resuming from the stored
upload URL), then runs the follow-up steps with the stored keys and URLs filled in.

Modules: ``store`` (the SQLite outbox and its states), ``transport`` (the gateway's HTTP API),
``steps`` (linked follow-up requests), ``sync`` (scheduling, retries, backoff), ``report``
(terminal progress and JSON lines), ``advise`` (what a re-encode would save), ``cli`` (click).
It talks to the gateway over HTTP only and imports nothing of the server side.
"""
