"""The role x action matrix of jmirror_web.intercepts.access, on an assigned case and on
a case the user is not assigned to."""

import pytest
from django.contrib.auth.models import AnonymousUser

from jmirror_web.intercepts.access import Action, Role, cases_for, may
from tests.factories import assign, make_case, make_user

pytestmark = pytest.mark.django_db

CASE_ACTIONS = [
    Action.VIEW_RECORD,
    Action.VIEW_METADATA,
    Action.VIEW_CONTENT,
    Action.DOWNLOAD,
    Action.VERIFY_FILES,
]
GLOBAL_ACTIONS = [
    Action.MANAGE_RECORDS,
    Action.VIEW_RECORDS,
    Action.VIEW_AUDIT,
    Action.VIEW_HEALTH,
]

# What each kind of user may do on a case it is assigned to, and on one it is not.
CASE_RIGHTS: dict[str, tuple[set[Action], set[Action]]] = {
    "li-admin": (
        set(CASE_ACTIONS),
        {Action.VIEW_RECORD, Action.VIEW_METADATA, Action.VERIFY_FILES},
    ),
    "analyst": (set(CASE_ACTIONS), set()),
    "auditor": ({Action.VIEW_RECORD}, {Action.VIEW_RECORD}),
    "sysadmin": (set(), set()),
    "superuser": (
        set(CASE_ACTIONS),
        {Action.VIEW_RECORD, Action.VIEW_METADATA, Action.VERIFY_FILES},
    ),
    "no role": (set(), set()),
}
GLOBAL_RIGHTS: dict[str, set[Action]] = {
    "li-admin": {Action.MANAGE_RECORDS, Action.VIEW_RECORDS},
    "analyst": set(),
    "auditor": {Action.VIEW_RECORDS, Action.VIEW_AUDIT},
    "sysadmin": {Action.VIEW_HEALTH},
    "superuser": set(GLOBAL_ACTIONS),
    "no role": set(),
}


def user_of(kind: str):
    if kind == "superuser":
        return make_user(is_superuser=True, is_staff=True)
    if kind == "no role":
        return make_user()
    return make_user(Role(kind))


@pytest.mark.parametrize("kind", CASE_RIGHTS)
def test_case_rights_follow_the_role_and_the_assignment(kind: str):
    user = user_of(kind)
    assigned, other = make_case(), make_case()
    assign(user, assigned)
    allowed_assigned, allowed_other = CASE_RIGHTS[kind]
    assert {action for action in CASE_ACTIONS if may(user, action, assigned)} == allowed_assigned
    assert {action for action in CASE_ACTIONS if may(user, action, other)} == allowed_other


@pytest.mark.parametrize("kind", GLOBAL_RIGHTS)
def test_global_rights_follow_the_role(kind: str):
    user = user_of(kind)
    assert {action for action in GLOBAL_ACTIONS if may(user, action)} == GLOBAL_RIGHTS[kind]


def test_a_superuser_sees_no_content_of_a_case_without_an_assignment():
    superuser = make_user(is_superuser=True, is_staff=True)
    case = make_case()
    assert not may(superuser, Action.VIEW_CONTENT, case)
    assert not may(superuser, Action.DOWNLOAD, case)


def test_an_assigned_auditor_still_sees_no_content():
    auditor = make_user(Role.AUDITOR)
    case = make_case()
    assign(auditor, case)
    assert not may(auditor, Action.VIEW_CONTENT, case)


@pytest.mark.parametrize("action", CASE_ACTIONS + GLOBAL_ACTIONS)
def test_anonymous_and_inactive_users_may_do_nothing(action: Action):
    case = make_case()
    inactive = make_user(Role.ANALYST, is_superuser=True, is_active=False)
    assign(inactive, case)
    for user in (AnonymousUser(), inactive, None):
        if action in CASE_ACTIONS:
            assert not may(user, action, case)
        else:
            assert not may(user, action)


def test_cases_for_selects_exactly_the_cases_may_allows():
    analyst = make_user(Role.ANALYST)
    mine = make_case()
    make_case()
    assign(analyst, mine)
    for action in CASE_ACTIONS:
        assert list(cases_for(analyst, action)) == [mine]


def test_unassigning_an_analyst_ends_their_access():
    analyst = make_user(Role.ANALYST)
    case = make_case()
    assignment = assign(analyst, case)
    assert may(analyst, Action.VIEW_CONTENT, case)
    assignment.delete()
    assert not may(analyst, Action.VIEW_CONTENT, case)


def test_a_case_action_without_a_case_is_a_programming_error():
    with pytest.raises(ValueError, match="decided per case"):
        may(make_user(Role.ANALYST), Action.VIEW_CONTENT)
    with pytest.raises(ValueError, match="not a case action"):
        cases_for(make_user(Role.ANALYST), Action.VIEW_AUDIT)
