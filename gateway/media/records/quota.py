"""Quotas: what a tenant and a project may hold, and what the record stores check atomically.

What counts is what is *held*: records in ``HELD`` statuses (pending ones with the size they
promised, direct and tus) plus live *reservations* (a streamed form upload reserves its bytes
before they are accepted, and files as their parts begin). Every store write that makes a scope
hold more is checked in the same atomic write (SQLite: one transaction; DynamoDB: a condition on
the scope's ledger item in the record's transaction), so concurrent uploads cannot overshoot.
Writes that hold less (delete, abort, expiry, a record smaller than its reservation) are never
refused. A reservation left by a process that died ends at its ``expires_at``.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway import errors
from gateway.config import Settings
from gateway.media.lifecycle import Status

HELD: frozenset[Status] = frozenset(
    {Status.PENDING, Status.STORED, Status.PROCESSING, Status.READY, Status.FAILED,
     Status.INFECTED}
)  # fmt: skip


@dataclass(frozen=True)
class QuotaLimits:
    """0: no limit. ``tenant_*`` covers all of a tenant's projects (the "" tenant: everyone
    whose token carries none)."""

    project_bytes: int = 0
    project_files: int = 0
    tenant_bytes: int = 0
    tenant_files: int = 0

    @classmethod
    def of(cls, settings: Settings) -> QuotaLimits:
        return cls(
            project_bytes=settings.quota_project_bytes,
            project_files=settings.quota_project_files,
            tenant_bytes=settings.quota_tenant_bytes,
            tenant_files=settings.quota_tenant_files,
        )

    @property
    def active(self) -> bool:
        return any((self.project_bytes, self.project_files, self.tenant_bytes, self.tenant_files))


@dataclass(frozen=True)
class Held:
    files: int = 0
    bytes: int = 0

    def __add__(self, other: Held) -> Held:
        return Held(self.files + other.files, self.bytes + other.bytes)

    def __neg__(self) -> Held:
        return Held(-self.files, -self.bytes)

    @property
    def grows(self) -> bool:
        return self.files > 0 or self.bytes > 0


def check(limits: QuotaLimits, *, project: Held, tenant: Held, project_id: str) -> None:
    """Raise QuotaExceeded if what the scopes hold (after the write) is over a limit."""
    for scope, held, max_files, max_bytes in (
        (f"project {project_id}", project, limits.project_files, limits.project_bytes),
        ("tenant", tenant, limits.tenant_files, limits.tenant_bytes),
    ):
        if max_files and held.files > max_files:
            raise errors.QuotaExceeded(f"The {scope} may hold at most {max_files} files.")
        if max_bytes and held.bytes > max_bytes:
            raise errors.QuotaExceeded(f"The {scope} may hold at most {max_bytes} bytes.")
