"""Who is calling, from the token's claims, and what that caller may do. No Flask here.

Claims of the wrong type fail closed: a ``projects`` claim that is not a list of strings, a
``tenant`` that is not an identifier, an ``admin`` that is not a boolean are all refused (401),
never read as "no restriction".

Rights: a token may read every media item of its tenant in the projects it may use; it may
delete (and finish or abort a direct upload of) only what its subject uploaded, unless it
carries ``admin: true``, which allows that for every item it may read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway import errors
from gateway.media.naming import IDENTIFIER_RE


@dataclass(frozen=True)
class Principal:
    subject: str
    tenant: str  # "" when the token names none
    projects: frozenset[str] | None  # None: any project
    admin: bool = False

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> Principal:
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise errors.InvalidToken("The token has no subject (sub).")
        tenant = claims.get("tenant", "")
        if "tenant" in claims and not (isinstance(tenant, str) and IDENTIFIER_RE.fullmatch(tenant)):
            raise errors.InvalidToken("The token's tenant claim is not a valid identifier.")
        projects = claims.get("projects")
        if "projects" in claims and not (
            isinstance(projects, list) and all(isinstance(p, str) for p in projects)
        ):
            raise errors.InvalidToken("The token's projects claim must be a list of strings.")
        admin = claims.get("admin", False)
        if not isinstance(admin, bool):
            raise errors.InvalidToken("The token's admin claim must be true or false.")
        return cls(
            subject=subject,
            tenant=tenant,
            projects=None if projects is None else frozenset(projects),
            admin=admin,
        )

    def check_project(self, project_id: str) -> None:
        if self.projects is not None and project_id not in self.projects:
            raise errors.ProjectForbidden(f"The token does not allow project {project_id!r}.")

    def may_see(self, tenant: str, project_id: str) -> bool:
        return tenant == self.tenant and (self.projects is None or project_id in self.projects)

    def may_modify(self, *, tenant: str, project_id: str, owner: str) -> bool:
        """Delete, complete or abort: the uploader, or an admin of what it may see."""
        return self.may_see(tenant, project_id) and (self.admin or owner == self.subject)
