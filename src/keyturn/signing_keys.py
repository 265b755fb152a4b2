"""The server's own keys: Ed25519 signing keys (`grant`, `ledger`) and symmetric secret keys, one current
key per purpose, held either in a directory or in the database.

These are *signing keys*, not the agents' API keys (`keyturn api-keys`, `identity/api_keys.py`); their
public halves are served as the public keys (JWKS) at `/v1/keys`.

Two places a key ring can live:

- `DirectoryKeyRing` (`data_dir`, the default on a single machine, zero configuration)::

      data_dir/                 0700
        grant/                  0700
          <kid>.pem             0600  PKCS#8 PEM with two comment lines (purpose, creation time)
          <kid>.pem.retired     0600  a retired key: kept on disk, verifies nothing any more
          current               0644  the kid of the current key
        ledger/ …

- `DatabaseKeyRing` (`server_keys` table, sealed with AES-256-GCM under a key-encryption key given to every
  replica by `KEYTURN_KEY_ENCRYPTION_KEY` or `key_encryption_key_file`): replicas on one database share
  their keys without copying files, and a rotation on one is seen by all. A row's `purpose` says what the
  key is for (`grant`, `ledger`, `redaction`, …) and `algorithm` what kind it is (`Ed25519`, or
  `HMAC-SHA256` for a symmetric key), so any kind of server key fits the same table.

Every key is in one of three states: `current` (signs, and verifies), `verifying` (an older key after a
rotation: verifies what it signed) and `retired` (kept for the record, verifies nothing). `kid` of an Ed25519
key is the RFC 7638 JWK thumbprint of its public key, so it is stable and the same in every process.

Directory races: several processes may start at once on the same directory. Every file is written to a
temporary name and then linked into place, and the first `current` pointer is created with `os.link`, which
fails if another process won the race — the loser discards its key and reads the winner's. Rotation replaces
`current` atomically (`os.replace`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
import secrets
import stat
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keyturn.redact import RedactionKey, Redactor

PURPOSES = ("grant", "ledger")  # Ed25519 keys every server has
REDACTION = "redaction"  # the HMAC key of keyed redaction digests (keyturn.redact)
SECRET_PURPOSES = frozenset({REDACTION})  # symmetric keys (HMAC-SHA256), 32 random bytes
REDACTION_DIR = REDACTION  # in a data_dir: <kid>.key files and `current`; not a signing purpose
_REDACTION_FILE = re.compile(r"^([A-Za-z0-9_-]{16})\.key$")
ED25519 = "Ed25519"
HMAC_SHA256 = "HMAC-SHA256"
_PURPOSE_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_KID_FILE = re.compile(r"^([A-Za-z0-9_-]{43})\.pem$")
_RETIRED_SUFFIX = ".retired"
_CURRENT = "current"
_CREATED_PREFIX = "# created: "

KeyState = Literal["current", "verifying", "retired"]


class KeyRingError(Exception):
    """A key, its file or its row is unusable, or the key-encryption key does not fit; the message says what
    to do (it is shown as the one line of a failed start)."""


@dataclass(frozen=True)
class SigningKey:
    kid: str
    purpose: str
    private_key: Ed25519PrivateKey
    public_key: Ed25519PublicKey
    created_at: datetime


@dataclass(frozen=True)
class SecretKey:
    """A symmetric key (e.g. the HMAC key of keyed redaction digests)."""

    kid: str
    purpose: str
    secret: bytes
    created_at: datetime


@dataclass(frozen=True)
class KeyInfo:
    """What `keyturn signing-keys list` and the admin API show of a key: never the private part."""

    kid: str
    purpose: str
    algorithm: str
    state: KeyState
    created_at: datetime
    retired_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "purpose": self.purpose,
            "algorithm": self.algorithm,
            "state": self.state,
            "created_at": self.created_at.isoformat(),
            "retired_at": self.retired_at.isoformat() if self.retired_at else None,
        }


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    text = text.strip()
    return base64.urlsafe_b64decode(text.replace("+", "-").replace("/", "_") + "=" * (-len(text) % 4))


def raw_public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def thumbprint(key: Ed25519PublicKey) -> str:
    """RFC 7638 JWK thumbprint: SHA-256 of the canonical required members, base64url without padding."""
    members = {"crv": "Ed25519", "kty": "OKP", "x": b64url(raw_public_bytes(key))}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode("ascii")
    return b64url(hashlib.sha256(canonical).digest())


def check_purpose(purpose: str) -> str:
    if not _PURPOSE_PATTERN.match(purpose):
        raise ValueError(f"invalid key purpose {purpose!r} (lowercase letters, digits and -)")
    return purpose


def algorithm_of(purpose: str) -> str:
    return HMAC_SHA256 if purpose in SECRET_PURPOSES else ED25519


class KeyRing(ABC):
    """The keys of a server. `DirectoryKeyRing` and `DatabaseKeyRing` keep them; this says what they offer."""

    storage: str

    @abstractmethod
    def signing_key(self, purpose: str) -> SigningKey:
        """The current Ed25519 key of `purpose`, generated on first use."""

    @abstractmethod
    def public_key_map(self, purpose: str) -> Mapping[str, Ed25519PublicKey]:
        """kid -> public key of every key of `purpose` that verifies (current and verifying)."""

    @abstractmethod
    def secret_key(self, purpose: str) -> SecretKey:
        """The current symmetric key of `purpose` (one of `SECRET_PURPOSES`), generated on first use."""

    @abstractmethod
    def rotate(self, purpose: str) -> KeyInfo:
        """Make a new key current; the previous one keeps verifying until it is retired."""

    @abstractmethod
    def retire(self, kid: str) -> KeyInfo:
        """Stop a non-current key from verifying anything. Raises `KeyRingError` for the current key."""

    @abstractmethod
    def list_keys(self) -> list[KeyInfo]:
        """Every key of every purpose, oldest first (retired ones included)."""

    @abstractmethod
    def redaction_key(self) -> RedactionKey:
        """The current key for the keyed digests of redacted values, generated on first use."""

    @abstractmethod
    def redaction_keys(self) -> dict[str, RedactionKey]:
        """kid -> key, the current one and every older one (to check digests made before a rotation)."""

    @abstractmethod
    def rotate_redaction_key(self) -> RedactionKey:
        """A new current redaction key; older ones still check their digests."""

    def redactor(self) -> Redactor:
        """The redactor the server passes to the workflow and the views: current key, all keys known."""
        return Redactor(key=self.redaction_key(), keys=self.redaction_keys())

    def prepare(self, purposes: Sequence[str] = PURPOSES) -> None:
        """Make sure every purpose has a current key (at start, so problems show then, not at first use)."""
        for purpose in purposes:
            if purpose in SECRET_PURPOSES:
                self.secret_key(purpose)
            else:
                self.signing_key(purpose)

    def purposes(self) -> list[str]:
        found = {k.purpose for k in self.list_keys()}
        return [*PURPOSES, *sorted(found - set(PURPOSES))]

    def jwks(self) -> dict[str, Any]:
        """The public keys (JWK set) of every Ed25519 purpose: the current and the verifying ones."""
        out: list[dict[str, Any]] = []
        infos = {(k.purpose, k.kid): k for k in self.list_keys()}
        for purpose in self.purposes():
            if purpose in SECRET_PURPOSES:
                continue  # a symmetric key has no public half
            publics = self.public_key_map(purpose)
            ordered = sorted(
                (infos[(purpose, kid)] for kid in publics if (purpose, kid) in infos),
                key=lambda k: (k.created_at, k.kid),
            )
            for info in ordered:
                out.append(
                    {
                        "kty": "OKP",
                        "crv": "Ed25519",
                        "x": b64url(raw_public_bytes(publics[info.kid])),
                        "kid": info.kid,
                        "alg": "EdDSA",
                        "use": "sig",
                        "keyturn_purpose": purpose,
                        "status": info.state,  # current or verifying (a retired key is not listed)
                        "created_at": info.created_at.isoformat(),
                    }
                )
        return {"keys": out}


# --- in a directory -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PurposeState:
    """What was on disk the last time a purpose directory was read, and the fingerprint of that disk state."""

    fingerprint: tuple[Any, ...]
    current: SigningKey
    keys: dict[str, SigningKey]  # every verifying key, current included, by kid


class DirectoryKeyRing(KeyRing):
    storage = "directory"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)  # created with the first key, not before (a failed start leaves none)
        self._states: dict[str, _PurposeState] = {}
        self._redaction_cache: tuple[tuple[Any, ...], RedactionKey, dict[str, RedactionKey]] | None = None
        self._lock = threading.Lock()

    def signing_key(self, purpose: str) -> SigningKey:
        return self._state(purpose).current

    def public_key_map(self, purpose: str) -> dict[str, Ed25519PublicKey]:
        return {kid: key.public_key for kid, key in self._state(purpose).keys.items()}

    # --- the redaction key (HMAC) -------------------------------------------------------------------

    def redaction_key(self) -> RedactionKey:
        current, _ = self._redaction_state()
        return current

    def redaction_keys(self) -> dict[str, RedactionKey]:
        _, keys = self._redaction_state()
        return dict(keys)

    def rotate_redaction_key(self) -> RedactionKey:
        directory = self._redaction_dir()
        key = _write_new_redaction_key(directory)
        tmp = _write_temp(directory, (key.kid + "\n").encode("ascii"), 0o644)
        os.replace(tmp, directory / _CURRENT)
        return key

    def _redaction_dir(self) -> Path:
        _make_private_dir(self.data_dir)
        directory = self.data_dir / REDACTION_DIR
        _make_private_dir(directory)
        return directory

    def _redaction_state(self) -> tuple[RedactionKey, dict[str, RedactionKey]]:
        directory = self._redaction_dir()
        if not (directory / _CURRENT).exists():
            key = _write_new_redaction_key(directory)
            tmp = _write_temp(directory, (key.kid + "\n").encode("ascii"), 0o644)
            try:
                os.link(tmp, directory / _CURRENT)
            except FileExistsError:
                with contextlib.suppress(FileNotFoundError):  # another process won: its key is current
                    (directory / f"{key.kid}.key").unlink()
            finally:
                tmp.unlink()
        current_kid = ""
        for _ in range(5):
            current_stat = (directory / _CURRENT).stat()
            names = tuple(sorted(n for n in os.listdir(directory) if _REDACTION_FILE.match(n)))
            fingerprint = (current_stat.st_ino, current_stat.st_mtime_ns, names)
            with self._lock:
                cached = self._redaction_cache
            if cached is not None and cached[0] == fingerprint:
                return cached[1], cached[2]
            current_kid = (directory / _CURRENT).read_text(encoding="ascii").strip()
            keys: dict[str, RedactionKey] = {}
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    key = load_redaction_key(directory / name)
                    keys[key.kid] = key
            if current_kid in keys:
                with self._lock:
                    self._redaction_cache = (fingerprint, keys[current_kid], keys)
                return keys[current_kid], keys
        raise KeyRingError(f"{directory / _CURRENT}: names key {current_kid!r}, which is not in {directory}")

    def secret_key(self, purpose: str) -> SecretKey:
        raise KeyRingError(
            f"{self.data_dir}: symmetric {purpose!r} keys are kept only in the database "
            "(set a key-encryption key)"
        )

    def rotate(self, purpose: str) -> KeyInfo:
        directory = self._purpose_dir(purpose)
        key = _write_new_key(directory, purpose)
        tmp = _write_temp(directory, (key.kid + "\n").encode("ascii"), 0o644)
        os.replace(tmp, directory / _CURRENT)
        with self._lock:
            self._states.pop(purpose, None)
        return KeyInfo(key.kid, purpose, ED25519, "current", key.created_at)

    def retire(self, kid: str) -> KeyInfo:
        for info in self.list_keys():
            if info.kid != kid or info.state == "retired":
                continue
            if info.state == "current":
                raise KeyRingError(
                    f"key {kid} is the current {info.purpose} key: rotate first, then retire it"
                )
            path = self.data_dir / info.purpose / f"{kid}.pem"
            os.replace(path, path.with_name(path.name + _RETIRED_SUFFIX))
            with self._lock:
                self._states.pop(info.purpose, None)
            return KeyInfo(kid, info.purpose, ED25519, "retired", info.created_at, datetime.now(UTC))
        raise KeyRingError(f"no verifying key {kid} (see `keyturn signing-keys list`)")

    def list_keys(self) -> list[KeyInfo]:
        out: list[KeyInfo] = []
        for purpose in self._purposes_on_disk():
            state = self._state(purpose)
            for key in state.keys.values():
                status: KeyState = "current" if key.kid == state.current.kid else "verifying"
                out.append(KeyInfo(key.kid, purpose, ED25519, status, key.created_at))
            directory = self.data_dir / purpose
            for name in sorted(os.listdir(directory)):
                if name.endswith(_RETIRED_SUFFIX) and _KID_FILE.match(name.removesuffix(_RETIRED_SUFFIX)):
                    path = directory / name
                    info = path.stat()
                    created = _created_at(path.read_bytes(), info)
                    retired = datetime.fromtimestamp(info.st_ctime, UTC)
                    kid = name.removesuffix(_RETIRED_SUFFIX).removesuffix(".pem")
                    out.append(KeyInfo(kid, purpose, ED25519, "retired", created, retired))
        return sorted(out, key=lambda k: (k.purpose, k.created_at, k.kid))

    def purposes(self) -> list[str]:
        return [*PURPOSES, *sorted(set(self._purposes_on_disk()) - set(PURPOSES))]

    def _purposes_on_disk(self) -> list[str]:
        if not self.data_dir.is_dir():
            return list(PURPOSES)
        found = {p.name for p in self.data_dir.iterdir() if p.is_dir() and _PURPOSE_PATTERN.match(p.name)}
        return sorted((found - {REDACTION_DIR}) | set(PURPOSES))

    # --- internals ----------------------------------------------------------------------------------

    def _purpose_dir(self, purpose: str) -> Path:
        check_purpose(purpose)
        _make_private_dir(self.data_dir)
        directory = self.data_dir / purpose
        _make_private_dir(directory)
        return directory

    def _state(self, purpose: str) -> _PurposeState:
        directory = self._purpose_dir(purpose)
        current_path = directory / _CURRENT
        if not current_path.exists():
            self._create_first(directory, purpose)
        for attempt in range(5):
            fingerprint = _fingerprint(directory)
            with self._lock:
                cached = self._states.get(purpose)
                if cached is not None and cached.fingerprint == fingerprint:
                    return cached
            try:
                state = _load_state(directory, purpose, fingerprint)
            except _ChangedWhileReading:
                if attempt == 4:
                    raise KeyRingError(f"{directory}: keys keep changing while being read") from None
                continue  # another process rotated or lost a creation race meanwhile: read again
            with self._lock:
                self._states[purpose] = state
            return state
        raise AssertionError("unreachable")

    def _create_first(self, directory: Path, purpose: str) -> None:
        key = _write_new_key(directory, purpose)
        tmp = _write_temp(directory, (key.kid + "\n").encode("ascii"), 0o644)
        try:
            os.link(tmp, directory / _CURRENT)
        except FileExistsError:
            # Another process created the first key at the same moment; its key is the current one.
            # Ours was never current and never signed anything: remove it.
            with contextlib.suppress(FileNotFoundError):
                (directory / f"{key.kid}.pem").unlink()
        finally:
            tmp.unlink()


def read_directory_keys(data_dir: Path) -> dict[str, tuple[str, list[SigningKey]]]:
    """purpose -> (current kid, every verifying key) of an existing data_dir, without creating anything:
    what a `DatabaseKeyRing` imports on its first start, so grants and checkpoints signed before stay
    verifiable."""
    out: dict[str, tuple[str, list[SigningKey]]] = {}
    if not data_dir.is_dir():
        return out
    for directory in sorted(
        p
        for p in data_dir.iterdir()
        if p.is_dir() and _PURPOSE_PATTERN.match(p.name) and p.name != REDACTION_DIR
    ):
        if not (directory / _CURRENT).exists():
            continue
        state = _load_state(directory, directory.name, _fingerprint(directory))
        out[directory.name] = (state.current.kid, list(state.keys.values()))
    return out


# --- in the database ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyRow:
    """One row of `server_keys`. `sealed` is base64url(nonce || AES-256-GCM ciphertext of the raw key)."""

    kid: str
    purpose: str
    algorithm: str
    public_key: str | None  # base64url raw public key (Ed25519); None for a symmetric key
    sealed: str
    kek_id: str
    state: KeyState
    created_at: datetime
    retired_at: datetime | None = None


class KeyRows(Protocol):
    """What a `DatabaseKeyRing` needs of the store (`keyturn.store.SqlServerKeyRepository`)."""

    def all(self) -> list[KeyRow]: ...

    def add(self, rows: Sequence[KeyRow]) -> bool:
        """Insert rows in one transaction; False if a row clashes (another replica made the current key)."""
        ...

    def rotate(self, row: KeyRow, now: datetime) -> bool:
        """Demote the current key of `row.purpose` to verifying and insert `row` as current; False on a
        concurrent rotation."""
        ...

    def retire(self, kid: str, now: datetime) -> bool:
        """Mark a verifying key retired; False when there is no such verifying key."""
        ...


KEK_ENV = "KEYTURN_KEY_ENCRYPTION_KEY"


def parse_kek(text: str, source: str = KEK_ENV) -> bytes:
    """A key-encryption key: 32 random bytes, base64 (standard or URL-safe, padding optional)."""
    try:
        raw = _unb64(text)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise KeyRingError(
            f"{source}: a key-encryption key is 32 random bytes in base64 "
            "(make one with `keyturn signing-keys new-kek` or `openssl rand -base64 32`)"
        )
    return raw


def new_kek() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def kek_id(kek: bytes) -> str:
    """A short, public name of a key-encryption key (says which one sealed a row, reveals nothing of it)."""
    return b64url(hashlib.sha256(b"keyturn kek id\0" + kek).digest())[:16]


@dataclass(frozen=True)
class _DbState:
    signing: dict[str, dict[str, SigningKey]]  # purpose -> kid -> verifying key
    secret: dict[str, dict[str, SecretKey]]
    current: dict[str, str]  # purpose -> current kid
    infos: list[KeyInfo]
    loaded_at: float


class _RefreshingMap(Mapping[str, Ed25519PublicKey]):
    """Public keys of one purpose that look once more in the database for a kid they do not know, so a
    key a peer replica just rotated in is accepted at once (at most one extra read per second)."""

    def __init__(self, ring: DatabaseKeyRing, purpose: str) -> None:
        self._ring = ring
        self._purpose = purpose
        self._keys = ring._public(purpose)

    def __getitem__(self, kid: str) -> Ed25519PublicKey:
        if kid not in self._keys and self._ring._refresh_for_unknown_kid():
            self._keys = self._ring._public(self._purpose)
        return self._keys[kid]

    def __contains__(self, kid: object) -> bool:
        try:
            self[kid]  # type: ignore[index]
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class DatabaseKeyRing(KeyRing):
    """Keys in the `server_keys` table, sealed under a key-encryption key (KEK) every replica is given."""

    storage = "database"

    def __init__(
        self,
        rows: KeyRows,
        kek: bytes,
        *,
        import_from: Path | None = None,
        refresh_seconds: float = 5.0,
    ) -> None:
        self._rows = rows
        self._aead = AESGCM(kek)
        self._kek_id = kek_id(kek)
        self._import_from = import_from
        self._refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._state: _DbState | None = None
        self._last_forced = 0.0

    # --- interface ----------------------------------------------------------------------------------

    def signing_key(self, purpose: str) -> SigningKey:
        check_purpose(purpose)
        state = self._current_state()
        if purpose not in state.current:
            state = self._create_first(purpose)
        return state.signing[purpose][state.current[purpose]]

    def public_key_map(self, purpose: str) -> Mapping[str, Ed25519PublicKey]:
        check_purpose(purpose)
        return _RefreshingMap(self, purpose)

    def secret_key(self, purpose: str) -> SecretKey:
        check_purpose(purpose)
        if purpose not in SECRET_PURPOSES:
            raise ValueError(f"{purpose!r} keys are signing keys, not secret keys")
        state = self._current_state()
        if purpose not in state.current:
            state = self._create_first(purpose)
        return state.secret[purpose][state.current[purpose]]

    def redaction_key(self) -> RedactionKey:
        key = self.secret_key(REDACTION)
        return RedactionKey(kid=key.kid, secret=key.secret)

    def redaction_keys(self) -> dict[str, RedactionKey]:
        return {kid: RedactionKey(kid=kid, secret=k.secret) for kid, k in self.secret_keys(REDACTION).items()}

    def rotate_redaction_key(self) -> RedactionKey:
        self.rotate(REDACTION)
        return self.redaction_key()

    def secret_keys(self, purpose: str) -> dict[str, SecretKey]:
        """kid -> every symmetric key of `purpose` that still verifies."""
        self.secret_key(purpose)
        return dict(self._current_state().secret.get(purpose, {}))

    def rotate(self, purpose: str) -> KeyInfo:
        self.prepare([check_purpose(purpose)])  # a rotation needs a current key to demote
        row = self._new_row(purpose, "current")
        if not self._rows.rotate(row, datetime.now(UTC)):
            raise KeyRingError(f"another rotation of the {purpose} key happened at the same time: try again")
        self._reload()
        return KeyInfo(row.kid, purpose, row.algorithm, "current", row.created_at)

    def retire(self, kid: str) -> KeyInfo:
        infos = {k.kid: k for k in self._reload().infos}
        info = infos.get(kid)
        if info is None or info.state == "retired":
            raise KeyRingError(f"no verifying key {kid} (see `keyturn signing-keys list`)")
        if info.state == "current":
            raise KeyRingError(f"key {kid} is the current {info.purpose} key: rotate first, then retire it")
        now = datetime.now(UTC)
        if not self._rows.retire(kid, now):
            raise KeyRingError(f"key {kid} was retired or rotated meanwhile: list the keys again")
        self._reload()
        return KeyInfo(kid, info.purpose, info.algorithm, "retired", info.created_at, now)

    def list_keys(self) -> list[KeyInfo]:
        return list(self._current_state().infos)

    @property
    def kek_id(self) -> str:
        return self._kek_id

    # --- internals ----------------------------------------------------------------------------------

    def _public(self, purpose: str) -> dict[str, Ed25519PublicKey]:
        if purpose not in self._current_state().current:
            self.signing_key(purpose)
        return {kid: k.public_key for kid, k in self._current_state().signing.get(purpose, {}).items()}

    def _current_state(self) -> _DbState:
        state = self._state
        if state is None or time.monotonic() - state.loaded_at >= self._refresh_seconds:
            return self._reload()
        return state

    def _refresh_for_unknown_kid(self) -> bool:
        """Read the table again for a kid nobody here knows, at most once a second (an unknown kid may be
        an attacker's: it must not turn every request into a database read)."""
        now = time.monotonic()
        with self._lock:
            if now - self._last_forced < 1.0:
                return False
            self._last_forced = now
        self._reload()
        return True

    def _reload(self) -> _DbState:
        rows = self._rows.all()
        signing: dict[str, dict[str, SigningKey]] = {}
        secret: dict[str, dict[str, SecretKey]] = {}
        current: dict[str, str] = {}
        infos: list[KeyInfo] = []
        for row in rows:
            infos.append(
                KeyInfo(row.kid, row.purpose, row.algorithm, row.state, row.created_at, row.retired_at)
            )
            if row.state == "retired":
                continue
            raw = self._unseal(row)
            if row.state == "current":
                current[row.purpose] = row.kid
            if row.algorithm == ED25519:
                private = Ed25519PrivateKey.from_private_bytes(raw)
                public = private.public_key()
                if thumbprint(public) != row.kid:
                    raise KeyRingError(f"server_keys: key {row.kid} does not match its thumbprint")
                signing.setdefault(row.purpose, {})[row.kid] = SigningKey(
                    row.kid, row.purpose, private, public, row.created_at
                )
            else:
                secret.setdefault(row.purpose, {})[row.kid] = SecretKey(
                    row.kid, row.purpose, raw, row.created_at
                )
        state = _DbState(signing, secret, current, infos, time.monotonic())
        with self._lock:
            self._state = state
        return state

    def _unseal(self, row: KeyRow) -> bytes:
        if row.kek_id != self._kek_id:
            raise KeyRingError(
                f"the database's {row.purpose} key {row.kid} is sealed under key-encryption key "
                f"{row.kek_id}, but this server was given {self._kek_id}: give every replica the same "
                f"{KEK_ENV} (or key_encryption_key_file)"
            )
        try:
            blob = _unb64(row.sealed)
            return self._aead.decrypt(blob[:12], blob[12:], _aad(row.purpose, row.kid, row.algorithm))
        except (InvalidTag, binascii.Error, ValueError):
            raise KeyRingError(
                f"server_keys: key {row.kid} does not decrypt under key-encryption key {self._kek_id} "
                "(altered row or wrong key)"
            ) from None

    def _seal(self, purpose: str, kid: str, algorithm: str, raw: bytes) -> str:
        nonce = secrets.token_bytes(12)
        return b64url(nonce + self._aead.encrypt(nonce, raw, _aad(purpose, kid, algorithm)))

    def _new_row(self, purpose: str, state: KeyState) -> KeyRow:
        created = datetime.now(UTC).replace(microsecond=0)
        if purpose in SECRET_PURPOSES:
            raw = secrets.token_bytes(32)
            kid = redaction_kid(raw) if purpose == REDACTION else "sk_" + secrets.token_urlsafe(12)
            sealed = self._seal(purpose, kid, HMAC_SHA256, raw)
            return KeyRow(kid, purpose, HMAC_SHA256, None, sealed, self._kek_id, state, created)
        private = Ed25519PrivateKey.generate()
        return self._ed25519_row(purpose, private, state, created)

    def _ed25519_row(
        self, purpose: str, private: Ed25519PrivateKey, state: KeyState, created: datetime
    ) -> KeyRow:
        public = private.public_key()
        kid = thumbprint(public)
        raw = private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        sealed = self._seal(purpose, kid, ED25519, raw)
        return KeyRow(
            kid, purpose, ED25519, b64url(raw_public_bytes(public)), sealed, self._kek_id, state, created
        )

    def _create_first(self, purpose: str) -> _DbState:
        rows = self._imported(purpose) or [self._new_row(purpose, "current")]
        # Several replicas may start at once: the table admits one current key per purpose, the others'
        # inserts fail and they read the winner's.
        self._rows.add(rows)
        state = self._reload()
        if purpose not in state.current:
            raise KeyRingError(f"server_keys: no current {purpose} key after creating one")
        return state

    def _imported(self, purpose: str) -> list[KeyRow]:
        if self._import_from is None or purpose in SECRET_PURPOSES:
            return []
        found = read_directory_keys(self._import_from).get(purpose)
        if found is None:
            return []
        current_kid, keys = found
        return [
            self._ed25519_row(
                purpose, key.private_key, "current" if key.kid == current_kid else "verifying", key.created_at
            )
            for key in keys
        ]


def _aad(purpose: str, kid: str, algorithm: str) -> bytes:
    # Binds the ciphertext to its row: a sealed key copied into another row (another purpose) fails.
    return f"keyturn server key\0{purpose}\0{kid}\0{algorithm}".encode()


def _fingerprint(directory: Path) -> tuple[Any, ...]:
    """Cheap summary of a purpose directory: changes whenever a key is added or `current` is replaced."""
    current = (directory / _CURRENT).stat()
    names = tuple(sorted(n for n in os.listdir(directory) if _KID_FILE.match(n)))
    return (current.st_ino, current.st_mtime_ns, names)


class _ChangedWhileReading(Exception):
    pass


def _load_state(directory: Path, purpose: str, fingerprint: tuple[Any, ...]) -> _PurposeState:
    current_kid = (directory / _CURRENT).read_text(encoding="ascii").strip()
    keys: dict[str, SigningKey] = {}
    for name in fingerprint[2]:
        try:
            key = _load_key(directory / name, purpose)
        except FileNotFoundError:
            raise _ChangedWhileReading from None
        keys[key.kid] = key
    if current_kid not in keys:
        if _fingerprint(directory) != fingerprint:
            raise _ChangedWhileReading
        raise KeyRingError(f"{directory / _CURRENT}: names key {current_kid!r}, which is not in {directory}")
    return _PurposeState(fingerprint=fingerprint, current=keys[current_kid], keys=keys)


def _load_key(path: Path, purpose: str) -> SigningKey:
    info = path.stat()
    if info.st_mode & 0o077:
        raise KeyRingError(
            f"{path}: private key file is accessible to group/others (mode {stat.filemode(info.st_mode)}); "
            f"run `chmod 600 {path}`"
        )
    data = path.read_bytes()
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except ValueError as exc:
        raise KeyRingError(f"{path}: not a readable PEM private key ({exc})") from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyRingError(f"{path}: expected an Ed25519 private key, found {type(private).__name__}")
    public = private.public_key()
    kid = thumbprint(public)
    expected = _KID_FILE.match(path.name)
    if expected is None or expected.group(1) != kid:
        raise KeyRingError(f"{path}: the file name does not match the key's thumbprint {kid}")
    return SigningKey(
        kid=kid, purpose=purpose, private_key=private, public_key=public, created_at=_created_at(data, info)
    )


def _created_at(data: bytes, info: os.stat_result) -> datetime:
    for line in data.decode("ascii", errors="replace").splitlines():
        if line.startswith(_CREATED_PREFIX):
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(line.removeprefix(_CREATED_PREFIX).strip())
    return datetime.fromtimestamp(info.st_mtime, UTC)  # a key imported by hand, without our header


def _write_new_key(directory: Path, purpose: str) -> SigningKey:
    private = Ed25519PrivateKey.generate()
    public = private.public_key()
    kid = thumbprint(public)
    created = datetime.now(UTC).replace(microsecond=0)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    header = f"# keyturn {purpose} signing key {kid}\n{_CREATED_PREFIX}{created.isoformat()}\n"
    content = header.encode("ascii") + pem
    tmp = _write_temp(directory, content, 0o600)
    try:
        os.link(tmp, directory / f"{kid}.pem")
    finally:
        tmp.unlink()
    return SigningKey(kid=kid, purpose=purpose, private_key=private, public_key=public, created_at=created)


def _write_temp(directory: Path, content: bytes, mode: int) -> Path:
    """Write `content` to a new temporary file in `directory` (same filesystem, so it can be linked)."""
    tmp = directory / f".tmp-{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have removed bits; never added any
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def _make_private_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        if not path.is_dir():
            raise KeyRingError(f"{path}: exists and is not a directory") from None
        return
    os.chmod(path, 0o700)


# --- redaction keys -------------------------------------------------------------------------------------

_REDACTION_HEADER = "# keyturn redaction key "


def redaction_kid(secret: bytes) -> str:
    """A key id derived from the key (stable across processes); 96 bits of a hash reveal nothing of it."""
    return b64url(hashlib.sha256(b"keyturn redaction key id\x00" + secret).digest())[:16]


def load_redaction_key(path: Path) -> RedactionKey:
    """Read a redaction key file (what `keyturn ledger check-value --key-file` takes, too)."""
    info = path.stat()
    if info.st_mode & 0o077:
        raise KeyRingError(
            f"{path}: redaction key file is accessible to group/others (mode {stat.filemode(info.st_mode)}); "
            f"run `chmod 600 {path}`"
        )
    lines = [
        line.strip()
        for line in path.read_text(encoding="ascii", errors="replace").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    try:
        if len(lines) != 1:
            raise ValueError("expected one line of base64url")
        secret = base64.urlsafe_b64decode(lines[0] + "=" * (-len(lines[0]) % 4))
    except ValueError as exc:
        raise KeyRingError(f"{path}: not a keyturn redaction key ({exc})") from exc
    if len(secret) != 32:
        raise KeyRingError(f"{path}: a redaction key is 32 bytes, this one is {len(secret)}")
    return RedactionKey(kid=redaction_kid(secret), secret=secret)


def redaction_key_text(key: RedactionKey, created: datetime) -> str:
    """A redaction key file's content: what `load_redaction_key` (and `ledger check-value`) reads."""
    return f"{_REDACTION_HEADER}{key.kid}\n{_CREATED_PREFIX}{created.isoformat()}\n{b64url(key.secret)}\n"


def _write_new_redaction_key(directory: Path) -> RedactionKey:
    secret = secrets.token_bytes(32)
    kid = redaction_kid(secret)
    created = datetime.now(UTC).replace(microsecond=0)
    content = redaction_key_text(RedactionKey(kid=kid, secret=secret), created)
    tmp = _write_temp(directory, content.encode("ascii"), 0o600)
    try:
        os.link(tmp, directory / f"{kid}.key")
    finally:
        tmp.unlink()
    return RedactionKey(kid=kid, secret=secret)
