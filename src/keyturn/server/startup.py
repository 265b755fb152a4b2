"""Everything `keyturn serve` checks and opens before it serves: one clear line when something is wrong.

`prepare(settings)` loads the policy, reads the users file, resolves the key-encryption key, opens and
migrates the database and opens the key ring, in that order — the checks that create nothing first. A
problem raises `StartupError` with one line naming it (the file and line, the database, the setting); what
`prepare` created before the problem (a new SQLite file, a new data_dir) is removed again, so a failed start
leaves nothing behind.

Where the server's keys live (`open_keyring`):

- a key-encryption key is configured (`KEYTURN_KEY_ENCRYPTION_KEY` or `key_encryption_key_file`): in the
  database, sealed under it, shared by every replica (keys found in an existing data_dir are imported once);
- none, and the database holds sealed keys: refuse — this replica could not accept its peers' grants;
- none, on PostgreSQL: refuse — replicas on one PostgreSQL must share their keys, so they need one;
- none, on SQLite: `data_dir`, as on a single machine.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from keyturn.channels.registry import target_names
from keyturn.config import Settings
from keyturn.identity.errors import UsersFileError
from keyturn.identity.users import read_users
from keyturn.policy import PolicyError, PolicyHolder
from keyturn.signing_keys import (
    KEK_ENV,
    DatabaseKeyRing,
    DirectoryKeyRing,
    KeyRing,
    KeyRingError,
    parse_kek,
)
from keyturn.store import SqlServerKeyRepository, Store, StoreError


class StartupError(Exception):
    """Why the server cannot start, in one line."""


@dataclass
class Components:
    """What `prepare` opened; the server's lifespan takes them over (and closes the store)."""

    store: Store
    policy: PolicyHolder
    keyring: KeyRing


def prepare(settings: Settings) -> Components:
    policy = load_policy(settings)
    check_tls(settings)
    if settings.users_file is not None:
        try:
            read_users(settings.users_file)
        except UsersFileError as exc:
            raise StartupError(_one_line(str(exc))) from None
    kek = key_encryption_key(settings)
    if kek is None and _backend(settings.database) == "postgresql":
        raise StartupError(_NEED_KEK)  # before the database is touched: a failed start changes nothing
    with _removed_on_failure(_created_paths(settings)):
        store = open_store(settings.database, group_commit=settings.store.group_commit)
        try:
            keyring = open_keyring(settings, store, kek)
            keyring.prepare()
        except (KeyRingError, StoreError, OSError) as exc:
            store.close()
            raise StartupError(_one_line(str(exc))) from None
        except BaseException:
            store.close()
            raise
    return Components(store=store, policy=policy, keyring=keyring)


def load_policy(settings: Settings) -> PolicyHolder:
    try:
        # targets: a policy naming a notify target the configuration does not define does not load
        return PolicyHolder(settings.policy, targets=target_names(settings))
    except PolicyError as exc:
        first = str(exc.problems[0]) if exc.problems else str(exc)
        more = len(exc.problems) - 1
        return_line = f"policy: {first}" + (f" (and {more} more: keyturn policy check)" if more > 0 else "")
        raise StartupError(_one_line(return_line)) from None


def check_tls(settings: Settings) -> None:
    """The certificate and key load together (uvicorn would otherwise fail later, with a traceback)."""
    if settings.tls_certfile is None or settings.tls_keyfile is None:
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            settings.tls_certfile, settings.tls_keyfile
        )
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise StartupError(
            f"tls_certfile {settings.tls_certfile} / tls_keyfile {settings.tls_keyfile}: {reason}"
        ) from None


def key_encryption_key(settings: Settings) -> bytes | None:
    if settings.key_encryption_key is not None:
        return _kek(settings.key_encryption_key.get_secret_value(), f"{KEK_ENV} (key_encryption_key)")
    path = settings.key_encryption_key_file
    if path is not None:
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise StartupError(f"key_encryption_key_file {path}: cannot read it: {reason}") from None
        return _kek(text, f"key_encryption_key_file {path}")
    return None


def _kek(text: str, source: str) -> bytes:
    try:
        return parse_kek(text, source)
    except KeyRingError as exc:
        raise StartupError(str(exc)) from None


def open_store(database: str, *, group_commit: bool = True) -> Store:
    """Open and migrate the database; `StartupError` names it (without its password) when it cannot."""
    where = safe_url(database)
    try:
        store = Store.open(database, group_commit=group_commit)
    except StoreError as exc:
        raise StartupError(f"database {where}: {_one_line(str(exc))}") from None
    try:
        store.upgrade()
    except StoreError as exc:
        store.close()
        reason = _one_line(str(exc)).removeprefix("the database is unavailable: ")
        raise StartupError(f"database {where} is unreachable: {reason}") from None
    except Exception as exc:  # a migration that fails is a start-up problem too, not a traceback
        store.close()
        raise StartupError(f"database {where}: {exc.__class__.__name__}: {_one_line(str(exc))}") from None
    return store


def open_keyring(settings: Settings, store: Store, kek: bytes | None) -> KeyRing:
    rows = SqlServerKeyRepository(store)
    if kek is not None:
        return DatabaseKeyRing(rows, kek, import_from=settings.data_dir)
    if rows.count():
        raise KeyRingError(
            "the database holds the server keys of its replicas, sealed under a key-encryption key: "
            f"give this server the same one ({KEK_ENV} or key_encryption_key_file)"
        )
    if store.backend == "postgresql":
        raise KeyRingError(_NEED_KEK)
    return DirectoryKeyRing(settings.data_dir)


_NEED_KEK = (
    "replicas on PostgreSQL share their signing keys through the database: set "
    f"{KEK_ENV} (or key_encryption_key_file) to one key-encryption key that every replica is given "
    "(make one with `keyturn signing-keys new-kek`)"
)


def _backend(database: str) -> str:
    try:
        return make_url(database).get_backend_name()
    except Exception:
        return ""


def safe_url(database: str) -> str:
    try:
        return make_url(database).render_as_string(hide_password=True)
    except Exception:
        return "(unparsable URL)"


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else text.strip()


def _created_paths(settings: Settings) -> list[Path]:
    """Paths a start may create that do not exist yet: removed again if the start fails."""
    candidates = [settings.data_dir]
    with contextlib.suppress(Exception):
        url = make_url(settings.database)
        if url.get_backend_name() == "sqlite" and url.database:
            db = Path(url.database)
            candidates += [db, *(db.with_name(db.name + suffix) for suffix in ("-wal", "-shm", "-journal"))]
    return [p for p in candidates if not p.exists()]


@contextlib.contextmanager
def _removed_on_failure(paths: list[Path]) -> Iterator[None]:
    try:
        yield
    except BaseException:
        for path in paths:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else is done (uvicorn serves on it)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(2048)
        sock.set_inheritable(True)
    except OSError as exc:
        sock.close()
        reason = "the address is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise StartupError(f"cannot listen on {host}:{port}: {reason}") from None
    return sock
