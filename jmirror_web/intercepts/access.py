"""Who may do what: the one place that answers "may user U do A (on case C)?".

Views, websocket consumers, the API and the admin site all ask :func:`may` (or use
:func:`cases_for`, which selects exactly the cases :func:`may` allows), so a rule is
changed here or nowhere.

The rules, from the warrant outwards:

- A case's packet content and its pcap downloads need an assignment to that case, for
  every user, superusers included: there is no way around a warrant. Only analysts and
  LI administrators (and superusers) can use an assignment; an assigned auditor or
  system administrator still sees no content.
- A case's metadata (sessions, counters, 5-tuples) is for its assigned users and for LI
  administrators, who map streams to intercepts.
- The records themselves (cases, intercepts, routers) are managed by LI administrators
  and read by auditors; an analyst reads the records of the cases assigned to them.
- The audit log is for auditors; service health for system administrators. Superusers
  have both, and every management right, but not content.
- Re-verifying a case's stored files against their recorded SHA-256 (no content is
  shown, only "matches" or not) is for the users who may download them and for LI
  administrators, who answer for the records.
- An export's manifest (hashes and parameters, no content) is for its requester, the
  users who may download from its case, and auditors (:func:`may_see_export`).
- Inactive and anonymous users may do nothing.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from django.db.models import QuerySet

from jmirror_web.intercepts.models import Case


class Role(StrEnum):
    """The groups created by migration intercepts/0002."""

    LI_ADMIN = "li-admin"
    ANALYST = "analyst"
    AUDITOR = "auditor"
    SYSADMIN = "sysadmin"


class Action(StrEnum):
    # On one case
    VIEW_RECORD = "view_record"  # the case, its intercepts and assignments
    VIEW_METADATA = "view_metadata"  # sessions, counters, 5-tuples
    VIEW_CONTENT = "view_content"  # packet bytes and decoded layers
    DOWNLOAD = "download"  # pcap exports
    VERIFY_FILES = "verify_files"  # re-hash stored files against their recorded SHA-256
    # Not about one case
    MANAGE_RECORDS = "manage_records"  # create/change/delete cases, intercepts, routers
    VIEW_RECORDS = "view_records"  # every case, intercept and router, read-only
    VIEW_AUDIT = "view_audit"
    VIEW_HEALTH = "view_health"


CASE_ACTIONS = frozenset(
    {
        Action.VIEW_RECORD,
        Action.VIEW_METADATA,
        Action.VIEW_CONTENT,
        Action.DOWNLOAD,
        Action.VERIFY_FILES,
    }
)
_GLOBAL_RIGHTS: dict[Action, frozenset[Role]] = {
    Action.MANAGE_RECORDS: frozenset({Role.LI_ADMIN}),
    Action.VIEW_RECORDS: frozenset({Role.LI_ADMIN, Role.AUDITOR}),
    Action.VIEW_AUDIT: frozenset({Role.AUDITOR}),
    Action.VIEW_HEALTH: frozenset({Role.SYSADMIN}),
}
_CONTENT_ROLES = frozenset({Role.ANALYST, Role.LI_ADMIN})


def roles_of(user: Any) -> frozenset[Role]:
    """The user's roles, cached on the user object for the request it belongs to."""
    cached: frozenset[Role] | None = getattr(user, "_jmirror_roles", None)
    if cached is None:
        names = set(user.groups.values_list("name", flat=True))
        cached = frozenset(role for role in Role if role.value in names)
        user._jmirror_roles = cached
    return cached


def _active(user: Any) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_active)


def may(user: Any, action: Action, case: Case | None = None) -> bool:
    """Whether ``user`` may do ``action``; case actions need the ``case``."""
    if not _active(user):
        return False
    if action in CASE_ACTIONS:
        if case is None:
            raise ValueError(f"{action} is decided per case; pass the case")
        return cases_for(user, action).filter(pk=case.pk).exists()
    if user.is_superuser:
        return True
    return bool(roles_of(user) & _GLOBAL_RIGHTS[action])


def cases_for(user: Any, action: Action) -> QuerySet[Case]:
    """The cases on which ``user`` may do the case action ``action``."""
    if action not in CASE_ACTIONS:
        raise ValueError(f"{action} is not a case action")
    if not _active(user):
        return Case.objects.none()
    roles = roles_of(user)
    assigned = Case.objects.filter(assignments__user=user)
    if action in (Action.VIEW_CONTENT, Action.DOWNLOAD):
        if user.is_superuser or roles & _CONTENT_ROLES:
            return assigned
        return Case.objects.none()
    if action == Action.VERIFY_FILES:
        if user.is_superuser or Role.LI_ADMIN in roles:
            return Case.objects.all()
        if Role.ANALYST in roles:
            return assigned
        return Case.objects.none()
    if user.is_superuser or Role.LI_ADMIN in roles:
        return Case.objects.all()
    if action == Action.VIEW_RECORD and Role.AUDITOR in roles:
        return Case.objects.all()
    if Role.ANALYST in roles:
        return assigned
    return Case.objects.none()


def may_see_export(user: Any, case: Case, requester_id: int | None) -> bool:
    """Whether ``user`` may read the manifest of an export made from ``case`` by the user
    ``requester_id``: its requester, whoever may download from the case, and auditors."""
    if not _active(user):
        return False
    if requester_id is not None and user.pk == requester_id:
        return True
    return may(user, Action.VIEW_AUDIT) or may(user, Action.DOWNLOAD, case)
