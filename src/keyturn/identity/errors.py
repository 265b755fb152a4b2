"""Errors of authentication (who are you? → HTTP 401) and authorisation (you may not → HTTP 403)."""

from __future__ import annotations


class AuthenticationError(Exception):
    """No credentials, or credentials that do not identify anyone. Messages never say which part was wrong."""


class AuthorizationError(Exception):
    """The caller is known but may not do this."""


class UsersFileError(Exception):
    """The users file cannot be read or does not validate; the message names the file, line and field."""
