"""The client's errors, declared once. The CLI turns each into one line and an exit status."""

from __future__ import annotations


class OutboxError(Exception):
    """Base: a problem with the outbox itself (not with one item's upload)."""

    exit_status = 3


class OutboxDamaged(OutboxError):
    def __init__(self, path: str, detail: str) -> None:
        super().__init__(
            f"the outbox database {path} is damaged ({detail}); nothing was changed: the queued "
            "files are still in its files/ directory. Move the database aside to start a new one."
        )


class OutboxLocked(OutboxError):
    def __init__(self, path: str) -> None:
        super().__init__(
            f"the outbox database {path} is locked by another process; nothing was changed, "
            "try again when it is done"
        )


class OutboxFull(OutboxError):
    def __init__(self, needed: int, used: int, limit: int) -> None:
        super().__init__(
            f"the outbox would hold {used + needed} bytes, over its limit of {limit} "
            f"({used} queued now); sync or purge first, or raise OUTBOX_MAX_BYTES"
        )


class DiskFull(OutboxError):
    """A push would leave the disk below its reserve (checked before copying)."""

    exit_status = 5

    def __init__(self, needed: int, free: int, reserve: int) -> None:
        super().__init__(
            f"copying {needed} bytes into the outbox would leave less than {reserve} bytes free "
            f"on its disk ({free} free now)"
        )


class NoSpaceLeft(OutboxError):
    """The disk filled up (ENOSPC, or SQLite's "database or disk is full") while writing."""

    exit_status = 5

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(
            f"the disk holding {path} is full ({detail}); what was written before is kept and "
            "the write that failed left nothing half-done. Free some space and run it again."
        )


class NoSuchItem(OutboxError):
    exit_status = 1

    def __init__(self, item_id: str) -> None:
        super().__init__(f"no item {item_id} in the outbox")


class InvalidItem(OutboxError):
    """What was pushed cannot be queued (a missing file, a bad field or step)."""

    exit_status = 2


class TokenRefused(Exception):
    """The gateway answered 401: no item can go on until the token is replaced."""

    exit_status = 4


class Transient(Exception):
    """This attempt failed but a later one may succeed (network, 5xx, 429, locks)."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, unreachable: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.unreachable = unreachable


class UploadGone(Transient):
    """The gateway no longer knows this tus upload (404 ``upload_not_found``, 410
    ``upload_gone``, 409 ``upload_expired``/``upload_aborted``): start a new one."""


class AlreadyStored(Transient):
    """The gateway says this tus upload is already stored (409 ``upload_stored``): read its
    record instead of sending more."""


class Interrupted(Exception):
    """The user asked the sync to stop (Ctrl-C): raised at the next chunk boundary."""


class Permanent(Exception):
    """The gateway (or a step's target) refused the request itself: retrying cannot help."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code
