"""`Directory`: who a principal id is *now*, for surfaces that know only an id (a linked chat account).

A chat click carries a Slack user, never a keyturn credential; the link gives a principal id, and this is
where its kind, groups and roles are looked up at the moment of review — from keyturn's identity source,
never from the chat service. The users file is the directory keyturn can query; an OIDC provider cannot
be asked about a person who is not presenting a token, so an id the users file does not list resolves to
nobody and the click is refused (fail closed) with a message saying how to review instead.
"""

from __future__ import annotations

from keyturn.identity.users import UsersFile
from keyturn.model import Authentication, Principal, PrincipalKind


class Directory:
    def __init__(self, users: UsersFile | None) -> None:
        self._users = users

    def lookup(self, principal_id: str, authn: Authentication | None = None) -> Principal | None:
        """The principal with its current groups and roles, or None when the identity source has no such
        human. Agent ids resolve to an agent (without groups), so the workflow refuses them by kind."""
        if principal_id.startswith("agent:"):
            return Principal(id=principal_id, kind=PrincipalKind.AGENT, authn=authn)
        user = self._users.user(principal_id) if self._users is not None else None
        if user is None:
            return None
        return user.principal().model_copy(update={"authn": authn})
