"""The users file: humans of a single-machine installation, their groups, roles and hashed personal tokens.

```yaml
users:
  - id: user:alice@example.com
    name: Alice (SRE)
    groups: [sre]
    roles: [auditor]          # admin | auditor; approving comes from groups, no role implies another
    tokens:
      - {id: ktu_Ab3dEf9h, hash: "sha256:…", created: "2030-01-07T09:00:00+00:00", name: laptop}
    entra_oid: 7d1c3f0e-0b6a-4f4e-9a51-2f0b9b6f1c11   # Microsoft Teams: the `oid` of this person in Entra
```

`entra_oid` links a Microsoft Teams account to the user: a click on a Teams card counts as this user's only
when the clicking account's Entra object id (`from.aadObjectId`, the `oid` claim the same Entra tenant puts in
its ID tokens) is this one, in the tenant the bot is configured for (docs/channels.md, "Microsoft Teams").

The server re-reads the file when it changes on disk (size, mtime or inode), so `keyturn users add-token`
and removing a token take effect without a restart. If an edit leaves the file invalid, users-file tokens
are refused (fail closed) and the error is logged until the file is fixed; at start an invalid file stops
the server with the file, line, column and field in the message.

`add_user_token` rewrites the file with PyYAML (ruamel is not a dependency): the leading comment block is
kept, other comments and the quoting style are not.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from keyturn.identity.errors import AuthenticationError, UsersFileError
from keyturn.identity.tokens import USER_TOKEN_PREFIX, hash_token, new_token, parse_token, token_matches
from keyturn.model import Principal, PrincipalKind, Role, canonical_principal_id, fold_principal_id

log = logging.getLogger("keyturn.identity")

# libyaml's loader where PyYAML was built with it: the pure-Python one takes a noticeable part of a start.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

INVALID_TOKEN = "invalid or revoked user token"
WRONG_PASSWORD = "wrong user or password"

# What an unknown user's password is verified against, so that a miss costs what a wrong password costs.
# A literal: hashing it at import took a noticeable part of a second of every start (Argon2 is slow on
# purpose). Made with PasswordHasher()'s defaults (test_users_file_dummy_hash checks they still apply).
_DUMMY_HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$dj9YyXorTMh4xRxLMshKig$WGGTkNE6G5qTy+8ct+RfplKK4D21+nq2DFXf1upvHBA"
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UserToken(_Strict):
    id: str = Field(pattern=r"^ktu_[A-Za-z0-9]{8}$")
    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    created: datetime
    name: str = ""


class User(_Strict):
    id: str = Field(pattern=r"^\s*[Uu][Ss][Ee][Rr]:\S+\s*$")
    name: str = ""
    groups: tuple[str, ...] = ()
    roles: tuple[Role, ...] = ()
    tokens: tuple[UserToken, ...] = ()
    # argon2id hash (`keyturn users set-password`): logs the user in to the web console on a single machine.
    password_hash: str | None = Field(default=None, pattern=r"^\$argon2id\$")
    # The person's Entra object id (a GUID, lower case): how a Teams click is linked to this user.
    entra_oid: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
    )

    @field_validator("entra_oid", mode="before")
    @classmethod
    def _lower_oid(cls, value: Any) -> Any:
        # Entra prints object ids in lower case, the Teams admin centre sometimes in upper: one person.
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("id")
    @classmethod
    def _canonical(cls, value: str) -> str:
        # One human is one principal however the file spells them: `user:Alice@Example.com` here and
        # `alice@example.com` from the identity provider are the same reviewer (keyturn.model).
        return canonical_principal_id(value)

    def principal(self) -> Principal:
        return Principal(
            id=self.id,
            kind=PrincipalKind.HUMAN,
            groups=frozenset(self.groups),
            roles=frozenset(self.roles),
            display_name=self.name or None,
        )


class UsersDocument(_Strict):
    users: tuple[User, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> UsersDocument:
        seen_users: set[str] = set()
        seen_tokens: set[str] = set()
        seen_oids: set[str] = set()
        for user in self.users:
            if user.id in seen_users:
                raise ValueError(f"user {user.id} is listed twice")
            seen_users.add(user.id)
            if user.entra_oid is not None:
                # One Entra account is one person: two users sharing it would let one click count twice.
                if user.entra_oid in seen_oids:
                    raise ValueError(f"entra_oid {user.entra_oid} is given to two users")
                seen_oids.add(user.entra_oid)
            for token in user.tokens:
                if token.id in seen_tokens:
                    raise ValueError(f"token id {token.id} is used twice")
                seen_tokens.add(token.id)
        return self


# --- reading ------------------------------------------------------------------------------------------


def read_users(path: Path) -> UsersDocument:
    """Parse and validate a users file; `UsersFileError` names the file, line, column and field."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsersFileError(f"{path}: cannot read the users file: {exc.strerror or exc}") from exc
    return parse_users(text, str(path))


def parse_users(text: str, source: str) -> UsersDocument:
    try:
        raw = yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise UsersFileError(f"{where}: invalid YAML: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UsersFileError(f"{source}:1:1: expected a mapping with a `users` list at the top level")
    try:
        return UsersDocument.model_validate(raw)
    except ValidationError as exc:
        root = yaml.compose(text, Loader=_LOADER)  # node positions, only to name where a problem is
        problems = []
        for error in exc.errors(include_url=False):
            loc = tuple(error["loc"])
            field = ".".join(str(p) for p in loc) or "(top level)"
            node = _node_at(root, loc)
            where = f"{source}:{node.start_mark.line + 1}:{node.start_mark.column + 1}" if node else source
            problems.append(f"{where}: {field}: {error['msg']}")
        raise UsersFileError("; ".join(problems)) from None


def _node_at(root: yaml.Node | None, loc: tuple[Any, ...]) -> yaml.Node | None:
    """The YAML node at a pydantic error location, or the deepest ancestor that exists."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            child = next(
                (v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part), None
            )
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        else:
            child = None
        if child is None:
            break
        node = child
    return node


# --- the live file the server reads -------------------------------------------------------------------


@dataclass(frozen=True)
class _Snapshot:
    signature: tuple[int, ...]
    document: UsersDocument | None  # None: the file is invalid right now (fail closed)
    by_token: dict[str, tuple[User, UserToken]]
    by_id: dict[str, User]
    by_entra_oid: dict[str, User]


class UsersFile:
    """A users file that is re-read whenever it changes on disk."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        document = read_users(self.path)  # at start an invalid file is an error, not a silent lock-out
        self._snapshot = _snapshot(_signature(self.path), document)

    def authenticate(self, plaintext: str) -> Principal:
        parsed = parse_token(plaintext)
        if parsed is None or parsed[0] != USER_TOKEN_PREFIX:
            raise AuthenticationError(INVALID_TOKEN)
        found = self._current().by_token.get(parsed[1])
        if found is None:
            token_matches(plaintext, "sha256:" + "0" * 64)  # same work as a real check
            raise AuthenticationError(INVALID_TOKEN)
        user, token = found
        if not token_matches(plaintext, token.hash):
            raise AuthenticationError(INVALID_TOKEN)
        return user.principal()

    def check_password(self, user_id: str, password: str) -> Principal:
        """The user for a console password login; `AuthenticationError` (one message for every failure)."""
        user = self._current().by_id.get(user_id.strip())
        hasher = PasswordHasher()
        try:
            if user is None or user.password_hash is None:
                hasher.verify(_DUMMY_HASH, password + "\x00")  # same work as a real check
                raise AuthenticationError(WRONG_PASSWORD)
            hasher.verify(user.password_hash, password)
        except (VerificationError, InvalidHashError):
            raise AuthenticationError(WRONG_PASSWORD) from None
        return user.principal()

    def user(self, user_id: str) -> User | None:
        return self._current().by_id.get(fold_principal_id(user_id))

    def user_by_entra_oid(self, oid: str) -> User | None:
        """The user whose `entra_oid` is `oid` (compared in lower case, as Entra spells GUIDs either way)."""
        return self._current().by_entra_oid.get(oid.strip().lower())

    def _current(self) -> _Snapshot:
        try:
            signature = _signature(self.path)
        except OSError:
            signature = (-1,)
        snapshot = self._snapshot
        if signature == snapshot.signature:
            return snapshot
        with self._lock:
            if signature != self._snapshot.signature:
                try:
                    document: UsersDocument | None = read_users(self.path)
                except UsersFileError as exc:
                    log.error("users file not reloaded, user tokens are refused until it is fixed: %s", exc)
                    document = None
                self._snapshot = _snapshot(signature, document)
            return self._snapshot


def _signature(path: Path) -> tuple[int, ...]:
    info = path.stat()
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _snapshot(signature: tuple[int, ...], document: UsersDocument | None) -> _Snapshot:
    users = document.users if document is not None else ()
    return _Snapshot(
        signature=signature,
        document=document,
        by_token={t.id: (u, t) for u in users for t in u.tokens},
        by_id={u.id: u for u in users},
        by_entra_oid={u.entra_oid: u for u in users if u.entra_oid is not None},
    )


# --- editing (keyturn users add-token) ------------------------------------------------------------------


def add_user_token(path: Path, user_id: str, label: str = "", *, now: datetime | None = None) -> str:
    """Add a personal token to `user_id` in the users file and return its plaintext (shown once).

    Only the hash is written. Concurrent calls are serialised with an exclusive lock on the file, and the
    new content replaces the file atomically, so a running server never reads half a file.
    """
    path = Path(path)
    with _locked(path):
        text = path.read_text(encoding="utf-8")
        document = parse_users(text, str(path))
        wanted = fold_principal_id(user_id)
        if not any(u.id == wanted for u in document.users):
            raise UsersFileError(
                f"{path}: no user {user_id!r} (users: {', '.join(u.id for u in document.users)})"
            )
        token_id, plaintext = new_token(USER_TOKEN_PREFIX)
        existing = {t.id for u in document.users for t in u.tokens}
        while token_id in existing:  # 62**8 ids; a clash is improbable but must not corrupt the file
            token_id, plaintext = new_token(USER_TOKEN_PREFIX)
        entry: dict[str, Any] = {
            "id": token_id,
            "hash": hash_token(plaintext),
            "created": (now or datetime.now(UTC)).replace(microsecond=0).isoformat(),
        }
        if label:
            entry["name"] = label
        raw = yaml.safe_load(text)
        for user in raw["users"]:
            if isinstance(user.get("id"), str) and fold_principal_id(user["id"]) == wanted:
                user["tokens"] = [*(user.get("tokens") or []), entry]
        new_text = _leading_comments(text) + yaml.safe_dump(
            raw, sort_keys=False, allow_unicode=True, default_flow_style=None, width=120
        )
        parse_users(new_text, str(path))  # never write a file the server would refuse
        _replace(path, new_text)
    return plaintext


def set_user_password(path: Path, user_id: str, password: str) -> None:
    """Store an argon2id hash of `password` for `user_id` (never the password itself)."""
    if len(password) < 12:
        raise UsersFileError("the password must have at least 12 characters")
    path = Path(path)
    with _locked(path):
        text = path.read_text(encoding="utf-8")
        document = parse_users(text, str(path))
        if not any(u.id == user_id for u in document.users):
            raise UsersFileError(
                f"{path}: no user {user_id!r} (users: {', '.join(u.id for u in document.users)})"
            )
        raw = yaml.safe_load(text)
        for user in raw["users"]:
            if user.get("id") == user_id:
                user["password_hash"] = PasswordHasher().hash(password)
        new_text = _leading_comments(text) + yaml.safe_dump(
            raw, sort_keys=False, allow_unicode=True, default_flow_style=None, width=120
        )
        parse_users(new_text, str(path))
        _replace(path, new_text)


def remove_user_token(path: Path, token_id: str) -> tuple[str, UserToken]:
    """Remove a personal token from the users file (revocation); returns its user id and the token entry.

    Same locking and atomic replacement as `add_user_token`; a running server refuses the token from its
    next request on. Raises `UsersFileError` when no user has a token `token_id`.
    """
    path = Path(path)
    with _locked(path):
        text = path.read_text(encoding="utf-8")
        document = parse_users(text, str(path))
        found = [(u.id, t) for u in document.users for t in u.tokens if t.id == token_id]
        if not found:
            raise UsersFileError(f"{path}: no user token {token_id!r}")
        raw = yaml.safe_load(text)
        for user in raw["users"]:
            user["tokens"] = [t for t in user.get("tokens") or [] if t.get("id") != token_id]
        new_text = _leading_comments(text) + yaml.safe_dump(
            raw, sort_keys=False, allow_unicode=True, default_flow_style=None, width=120
        )
        parse_users(new_text, str(path))
        _replace(path, new_text)
    return found[0]


def _leading_comments(text: str) -> str:
    kept = []
    for line in text.splitlines(keepends=True):
        if line.strip() and not line.lstrip().startswith("#"):
            break
        kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the file *currently* at `path` (it is replaced on write: re-check the inode)."""
    while True:
        try:
            handle = open(path, "rb")  # noqa: SIM115 - held open for the lock's lifetime
        except OSError as exc:
            raise UsersFileError(f"{path}: cannot open the users file: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            if os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino:
                yield
                return
        finally:
            handle.close()  # closing releases the lock


def _replace(path: Path, text: str) -> None:
    mode = path.stat().st_mode & 0o777
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
