"""gateway.media.principal: claims to a Principal (wrong types fail closed, 401) and its rights."""

from __future__ import annotations

import pytest

from gateway import errors
from gateway.media.principal import Principal


def test_claims_with_everything():
    principal = Principal.from_claims(
        {"sub": "alice", "tenant": "acme", "projects": ["p1", "p2", "p1"], "admin": True}
    )
    assert principal == Principal(
        subject="alice", tenant="acme", projects=frozenset({"p1", "p2"}), admin=True
    )


def test_claims_with_only_a_subject_restrict_nothing():
    principal = Principal.from_claims({"sub": "bob"})
    assert principal == Principal(subject="bob", tenant="", projects=None, admin=False)
    assert principal.tenant == "" and principal.projects is None and principal.admin is False


def test_an_empty_projects_list_allows_no_project():
    principal = Principal.from_claims({"sub": "bob", "projects": []})
    assert principal.projects == frozenset()
    with pytest.raises(errors.ProjectForbidden):
        principal.check_project("p1")


def test_admin_false_is_accepted():
    assert Principal.from_claims({"sub": "bob", "admin": False}).admin is False


@pytest.mark.parametrize(
    "claims, message",
    [
        ({}, "The token has no subject (sub)."),
        ({"sub": ""}, "The token has no subject (sub)."),
        ({"sub": 7}, "The token has no subject (sub)."),
        ({"sub": None}, "The token has no subject (sub)."),
        ({"sub": "a", "tenant": ""}, "The token's tenant claim is not a valid identifier."),
        ({"sub": "a", "tenant": None}, "The token's tenant claim is not a valid identifier."),
        ({"sub": "a", "tenant": 5}, "The token's tenant claim is not a valid identifier."),
        ({"sub": "a", "tenant": "a/b"}, "The token's tenant claim is not a valid identifier."),
        ({"sub": "a", "tenant": "acme\n"}, "The token's tenant claim is not a valid identifier."),
        ({"sub": "a", "tenant": "-acme"}, "The token's tenant claim is not a valid identifier."),
        ({"sub": "a", "projects": "p1"}, "The token's projects claim must be a list of strings."),
        ({"sub": "a", "projects": None}, "The token's projects claim must be a list of strings."),
        (
            {"sub": "a", "projects": ["p1", 2]},
            "The token's projects claim must be a list of strings.",
        ),
        ({"sub": "a", "projects": [None]}, "The token's projects claim must be a list of strings."),
        (
            {"sub": "a", "projects": {"p1": 1}},
            "The token's projects claim must be a list of strings.",
        ),
        ({"sub": "a", "admin": "true"}, "The token's admin claim must be true or false."),
        ({"sub": "a", "admin": 1}, "The token's admin claim must be true or false."),
        ({"sub": "a", "admin": None}, "The token's admin claim must be true or false."),
    ],
)
def test_claims_of_the_wrong_type_fail_closed(claims, message):
    with pytest.raises(errors.InvalidToken) as caught:
        Principal.from_claims(claims)
    assert caught.value.message == message
    assert (caught.value.status, caught.value.code) == (401, "invalid_token")


def test_check_project_names_the_refused_project():
    principal = Principal("alice", "", frozenset({"p1"}))
    principal.check_project("p1")
    with pytest.raises(errors.ProjectForbidden) as caught:
        principal.check_project("p2")
    assert caught.value.message == "The token does not allow project 'p2'."
    assert (caught.value.status, caught.value.code) == (403, "project_forbidden")
    Principal("alice", "", None).check_project("anything")


@pytest.mark.parametrize(
    "projects, tenant, project_id, seen",
    [
        (None, "acme", "p1", True),
        (None, "acme", "p9", True),
        (None, "", "p1", False),  # another tenant (none)
        (None, "globex", "p1", False),
        (frozenset({"p1"}), "acme", "p1", True),
        (frozenset({"p1"}), "acme", "p2", False),
        (frozenset({"p1"}), "globex", "p1", False),
        (frozenset(), "acme", "p1", False),
    ],
)
def test_may_see_its_tenant_in_its_projects(projects, tenant, project_id, seen):
    assert Principal("alice", "acme", projects).may_see(tenant, project_id) is seen


@pytest.mark.parametrize(
    "admin, tenant, project_id, owner, allowed",
    [
        (False, "acme", "p1", "alice", True),  # the uploader
        (False, "acme", "p1", "bob", False),  # a member, not the uploader
        (True, "acme", "p1", "bob", True),  # an admin of what it may see
        (True, "globex", "p1", "bob", False),  # an admin never across tenants
        (True, "acme", "p2", "bob", False),  # nor outside its projects
        (False, "globex", "p1", "alice", False),  # the same subject in another tenant
        (False, "acme", "p2", "alice", False),
    ],
)
def test_may_modify_own_items_or_as_an_admin(admin, tenant, project_id, owner, allowed):
    principal = Principal("alice", "acme", frozenset({"p1"}), admin=admin)
    assert principal.may_modify(tenant=tenant, project_id=project_id, owner=owner) is allowed
