"""C2SP signed notes (https://c2sp.org/signed-note) and checkpoints (https://c2sp.org/tlog-checkpoint).

A signed note is a UTF-8 text ending in a newline, a blank line, and one signature line per signer:
``— <key name> <base64(key hash || signature)>``. For Ed25519 the key hash is
``SHA-256(name || 0x0A || 0x01 || public key)[:4]`` and the signature covers the text alone. A verifier key
is written ``<name>+<hex key hash>+<base64(0x01 || public key)>``.

A checkpoint is a note whose text is ``<origin>\\n<tree size>\\n<base64 root hash>\\n`` followed by
optional extension lines. keyturn adds one extension line, ``time <RFC 3339 UTC>``, so the signing time is
covered by the signature (the specification allows extension lines and tells clients to ignore those they
do not understand, so other checkpoint tools still read keyturn's checkpoints).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ALG_ED25519 = 0x01
SIGNATURE_PREFIX = "\u2014 "  # an em dash and a space
TIME_PREFIX = "time "


class NoteError(ValueError):
    """A note, checkpoint or key that is malformed."""


class SignatureError(ValueError):
    """A note whose signatures do not verify. `code` is "unknown_key" or "bad_signature"."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_key_name(name: str) -> str:
    if not name or any(c.isspace() for c in name) or "+" in name:
        raise NoteError(f"a key name must be non-empty without spaces or '+': {name!r}")
    return name


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_hash(name: str, public_key: Ed25519PublicKey) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + _raw_public(public_key)).digest()[:4]


@dataclass(frozen=True)
class VerifierKey:
    name: str
    hash: bytes  # 4 bytes
    public_key: Ed25519PublicKey

    @classmethod
    def of(cls, name: str, public_key: Ed25519PublicKey) -> VerifierKey:
        return cls(check_key_name(name), key_hash(name, public_key), public_key)

    @classmethod
    def parse(cls, text: str) -> VerifierKey:
        """Parse ``name+hexhash+base64key``; the hash must match the name and key."""
        parts = text.strip().split("+", 2)
        if len(parts) != 3:
            raise NoteError(f"a verifier key is name+hash+key: {text!r}")
        name, hex_hash, encoded = parts
        try:
            raw = base64.b64decode(encoded, validate=True)
            wanted = bytes.fromhex(hex_hash)
        except (binascii.Error, ValueError) as exc:
            raise NoteError(f"verifier key {text!r}: bad encoding ({exc})") from exc
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise NoteError(f"verifier key {text!r}: not an Ed25519 key")
        key = cls.of(name, Ed25519PublicKey.from_public_bytes(raw[1:]))
        if key.hash != wanted:
            raise NoteError(f"verifier key {text!r}: the key hash does not match the name and key")
        return key

    def __str__(self) -> str:
        encoded = base64.b64encode(bytes([ALG_ED25519]) + _raw_public(self.public_key)).decode()
        return f"{self.name}+{self.hash.hex()}+{encoded}"

    @property
    def id(self) -> str:
        """``name+hash``: how a signature line names its key."""
        return f"{self.name}+{self.hash.hex()}"


class NoteSigner:
    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        self.private_key = private_key
        self.verifier = VerifierKey.of(name, private_key.public_key())

    @property
    def name(self) -> str:
        return self.verifier.name

    def sign(self, text: str) -> str:
        """The signed note of `text` (which must end in a newline and have no blank line)."""
        _check_text(text)
        signature = self.private_key.sign(text.encode())
        line = base64.b64encode(self.verifier.hash + signature).decode()
        return f"{text}\n{SIGNATURE_PREFIX}{self.name} {line}\n"


@dataclass(frozen=True)
class NoteSignature:
    name: str
    hash: bytes
    signature: bytes


@dataclass(frozen=True)
class Note:
    text: str
    signatures: tuple[NoteSignature, ...]

    @classmethod
    def parse(cls, note: str) -> Note:
        text, sep, sigs = note.rpartition("\n\n")
        if not sep:
            raise NoteError("a signed note needs a blank line before its signatures")
        text += "\n"
        _check_text(text)
        if not sigs.endswith("\n"):
            raise NoteError("a signed note ends with a newline")
        signatures = []
        for number, line in enumerate(sigs[:-1].split("\n"), start=1):
            if not line.startswith(SIGNATURE_PREFIX):
                raise NoteError(f"signature line {number} does not start with '— '")
            name, space, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
            try:
                raw = base64.b64decode(encoded, validate=True)
            except binascii.Error as exc:
                raise NoteError(f"signature line {number}: bad base64") from exc
            if not space or not name or len(raw) < 5:
                raise NoteError(f"signature line {number} is not '— name base64(hash || signature)'")
            signatures.append(NoteSignature(name, raw[:4], raw[4:]))
        if not signatures:
            raise NoteError("a signed note has at least one signature")
        return cls(text, tuple(signatures))

    def verify(self, keys: Iterable[VerifierKey]) -> VerifierKey:
        """The first known key with a valid signature. Raises `SignatureError` naming what is wrong."""
        known = {(k.name, k.hash): k for k in keys}
        seen: list[str] = []
        for sig in self.signatures:
            key = known.get((sig.name, sig.hash))
            if key is None:
                seen.append(f"{sig.name}+{sig.hash.hex()}")
                continue
            try:
                key.public_key.verify(sig.signature, self.text.encode())
            except InvalidSignature:
                raise SignatureError(
                    "bad_signature", f"the signature by {key.id} does not verify (forged or altered)"
                ) from None
            return key
        raise SignatureError(
            "unknown_key", f"signed only by keys that are not trusted: {', '.join(seen) or 'none'}"
        )


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("note text must end with a newline")
    if "\n\n" in text:
        raise NoteError("note text must not contain a blank line")


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    time: datetime | None = None
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        if not self.origin or "\n" in self.origin:
            raise NoteError("a checkpoint origin is one non-empty line")
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode()]
        if self.time is not None:
            lines.append(TIME_PREFIX + self.time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        lines.extend(self.extensions)
        return "\n".join(lines) + "\n"

    @classmethod
    def from_text(cls, text: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise NoteError("a checkpoint has an origin, a size and a root hash, each on its own line")
        origin, size_text, root_text, *rest = lines[:-1]
        if not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
            raise NoteError(f"checkpoint tree size {size_text!r} is not a decimal number")
        try:
            root = base64.b64decode(root_text, validate=True)
        except binascii.Error as exc:
            raise NoteError("checkpoint root hash is not base64") from exc
        if len(root) != 32 or not origin:
            raise NoteError("a checkpoint needs an origin and a 32-byte root hash")
        when: datetime | None = None
        extensions = []
        for line in rest:
            if line.startswith(TIME_PREFIX) and when is None:
                try:
                    when = datetime.strptime(line[len(TIME_PREFIX) :], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                        tzinfo=UTC
                    )
                except ValueError as exc:
                    raise NoteError(f"checkpoint time {line!r} is not RFC 3339 UTC") from exc
            else:
                extensions.append(line)
        return cls(origin, int(size_text), root, when, tuple(extensions))


@dataclass(frozen=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    note: Note
    raw: str

    @classmethod
    def parse(cls, raw: str) -> SignedCheckpoint:
        note = Note.parse(raw)
        return cls(Checkpoint.from_text(note.text), note, raw)

    @property
    def size(self) -> int:
        return self.checkpoint.size

    @property
    def root(self) -> bytes:
        return self.checkpoint.root

    def verify(self, keys: Sequence[VerifierKey]) -> VerifierKey:
        return self.note.verify(keys)


def sign_checkpoint(signer: NoteSigner, checkpoint: Checkpoint) -> str:
    return signer.sign(checkpoint.text())
