"""Who is calling: agent API keys, users-file tokens and JWTs of trusted issuers (OIDC), as `Principal`s.

`build_authenticator(settings, store)` gives the one `Authenticator` the server uses; its `authenticate()`
is the only source of the requester of a request. See docs/identity.md.
"""

from keyturn.identity.authenticator import Authenticator, build_authenticator
from keyturn.identity.errors import AuthenticationError, AuthorizationError, UsersFileError

__all__ = [
    "AuthenticationError",
    "Authenticator",
    "AuthorizationError",
    "UsersFileError",
    "build_authenticator",
]
