"""Ed25519 signing keys of the server, one current key per purpose (`grant`, `ledger`), kept in `data_dir`.

Layout (all created by the first process that needs a key)::

    data_dir/                 0700
      grant/                  0700
        <kid>.pem             0600  PKCS#8 PEM with two comment lines (purpose, creation time)
        current               0644  the kid of the current key
      ledger/ …

`kid` is the RFC 7638 JWK thumbprint of the public key, so it is stable, derived from the key alone and the
same in every process. Several processes may start at once on the same directory: every file is written to
a temporary name and then linked into place, and the first `current` pointer is created with `os.link`,
which fails if another process won the race — the loser discards its key and reads the winner's. Rotation
replaces `current` atomically (`os.replace`); the older keys stay in the directory as *retired* keys, so
grants and checkpoints they signed can still be verified.

The redaction key (HMAC-SHA256, for the keyed digests of redacted values: `keyturn.redact`) lives beside
them in ``data_dir/redaction/`` (``<kid>.key`` 0600, ``current``), written the same race-safe way, and is
reached only through `KeyRing.redaction_key()` / `redaction_keys()`, so it moves wherever the signing keys
move (e.g. into the database that replicas share). It is not a purpose: no public key, not in the JWK set.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import stat
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from keyturn.redact import RedactionKey, Redactor

PURPOSES = ("grant", "ledger")
REDACTION_DIR = "redaction"  # HMAC key(s) for redaction digests; not a signing purpose
_REDACTION_FILE = re.compile(r"^([A-Za-z0-9_-]{16})\.key$")
_PURPOSE_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_KID_FILE = re.compile(r"^([A-Za-z0-9_-]{43})\.pem$")
_CURRENT = "current"
_CREATED_PREFIX = "# created: "


class KeyRingError(Exception):
    """A key file or directory is unusable (permissions, corrupt PEM, wrong key type)."""


@dataclass(frozen=True)
class SigningKey:
    kid: str
    purpose: str
    private_key: Ed25519PrivateKey
    public_key: Ed25519PublicKey
    created_at: datetime


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def raw_public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def thumbprint(key: Ed25519PublicKey) -> str:
    """RFC 7638 JWK thumbprint: SHA-256 of the canonical required members, base64url without padding."""
    members = {"crv": "Ed25519", "kty": "OKP", "x": b64url(raw_public_bytes(key))}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode("ascii")
    return b64url(hashlib.sha256(canonical).digest())


@dataclass(frozen=True)
class _PurposeState:
    """What was on disk the last time a purpose directory was read, and the fingerprint of that disk state."""

    fingerprint: tuple[Any, ...]
    current: SigningKey
    keys: dict[str, SigningKey]  # every key, current included, by kid


class KeyRing:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        _make_private_dir(self.data_dir)
        self._states: dict[str, _PurposeState] = {}
        self._redaction_cache: tuple[tuple[Any, ...], RedactionKey, dict[str, RedactionKey]] | None = None
        self._lock = threading.Lock()

    # --- public interface ---------------------------------------------------------------------------

    def signing_key(self, purpose: str) -> SigningKey:
        """The current key of `purpose`, generated on first use."""
        return self._state(purpose).current

    def public_key_map(self, purpose: str) -> dict[str, Ed25519PublicKey]:
        """kid -> public key, of the current key and every retired one (for verification)."""
        return {kid: key.public_key for kid, key in self._state(purpose).keys.items()}

    def rotate(self, purpose: str) -> SigningKey:
        """Make a new key current. Retired keys stay on disk and keep verifying what they signed."""
        directory = self._purpose_dir(purpose)
        key = _write_new_key(directory, purpose)
        tmp = _write_temp(directory, (key.kid + "\n").encode("ascii"), 0o644)
        os.replace(tmp, directory / _CURRENT)
        with self._lock:
            self._states.pop(purpose, None)
        return key

    def jwks(self) -> dict[str, Any]:
        """A JWK set of every purpose's current and retired public keys."""
        out: list[dict[str, Any]] = []
        for purpose in self.purposes():
            state = self._state(purpose)
            ordered = sorted(state.keys.values(), key=lambda k: (k.created_at, k.kid))
            for key in ordered:
                out.append(
                    {
                        "kty": "OKP",
                        "crv": "Ed25519",
                        "x": b64url(raw_public_bytes(key.public_key)),
                        "kid": key.kid,
                        "alg": "EdDSA",
                        "use": "sig",
                        "keyturn_purpose": purpose,
                        "status": "current" if key.kid == state.current.kid else "retired",
                        "created_at": key.created_at.isoformat(),
                    }
                )
        return {"keys": out}

    def purposes(self) -> list[str]:
        """The standard purposes plus any other purpose directory found on disk."""
        found = {p.name for p in self.data_dir.iterdir() if p.is_dir() and _PURPOSE_PATTERN.match(p.name)}
        return [*PURPOSES, *sorted(found - set(PURPOSES) - {REDACTION_DIR})]

    # --- the redaction key (HMAC) ---------------------------------------------------------------------

    def redaction_key(self) -> RedactionKey:
        """The current key for the keyed digests of redacted values, generated on first use."""
        current, _ = self._redaction_state()
        return current

    def redaction_keys(self) -> dict[str, RedactionKey]:
        """kid -> key, the current one and every retired one (to check digests made before a rotation)."""
        _, keys = self._redaction_state()
        return dict(keys)

    def redactor(self) -> Redactor:
        """The redactor the server passes to the workflow and the views: current key, all keys known."""
        current, keys = self._redaction_state()
        return Redactor(key=current, keys=keys)

    def rotate_redaction_key(self) -> RedactionKey:
        """A new current redaction key; the older ones stay on disk so their digests can still be checked."""
        directory = self._redaction_dir()
        key = _write_new_redaction_key(directory)
        tmp = _write_temp(directory, (key.kid + "\n").encode("ascii"), 0o644)
        os.replace(tmp, directory / _CURRENT)
        return key

    def _redaction_dir(self) -> Path:
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

    # --- internals ----------------------------------------------------------------------------------

    def _purpose_dir(self, purpose: str) -> Path:
        if not _PURPOSE_PATTERN.match(purpose):
            raise ValueError(f"invalid key purpose {purpose!r}")
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


def _write_new_redaction_key(directory: Path) -> RedactionKey:
    secret = secrets.token_bytes(32)
    kid = redaction_kid(secret)
    created = datetime.now(UTC).replace(microsecond=0)
    content = f"{_REDACTION_HEADER}{kid}\n{_CREATED_PREFIX}{created.isoformat()}\n{b64url(secret)}\n"
    tmp = _write_temp(directory, content.encode("ascii"), 0o600)
    try:
        os.link(tmp, directory / f"{kid}.key")
    finally:
        tmp.unlink()
    return RedactionKey(kid=kid, secret=secret)
