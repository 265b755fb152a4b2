"""Signing checkpoints of the live ledger and publishing them to witnesses.

The store appends events (and their leaf hashes) inside each transition's transaction; nothing here is on
that path. A `Checkpointer` runs beside the server: it follows the log with a `LiveTree` (which reads only
the leaf hashes it has not seen, so the log is never rehashed), and every `checkpoint_every` events or
`checkpoint_interval` — and once more at shutdown — signs ``(origin, size, root, time)`` as a C2SP
checkpoint and stores it. Several replicas may do this at once: the store keeps the first checkpoint of a
size (`add_checkpoint` returns False to the others), and any replica's checkpoint of a size has the same
root, because the log is one.

Before signing anything the checkpointer checks that the tree it rebuilt from the database reproduces the
newest stored checkpoint; if it does not, the database was altered, and signing would launder the change,
so it stops signing and logs why.

Witnesses: each new checkpoint is written to ``<witness_dir>/checkpoint.<size>`` and ``latest``, and
POSTed (``text/plain``) to each of `witness_urls`. A failed POST is retried with backoff on later rounds;
it never delays a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from keyturn.ledger.live import LiveTree
from keyturn.ledger.note import Checkpoint, NoteSigner, VerifierKey, sign_checkpoint

if TYPE_CHECKING:
    from keyturn.config import Settings
    from keyturn.store import Store

log = logging.getLogger("keyturn.ledger")

Clock = Callable[[], datetime]


class SigningKeyLike(Protocol):
    """What `keyturn.keys.SigningKey` provides and the ledger needs."""

    @property
    def kid(self) -> str: ...

    @property
    def private_key(self) -> Ed25519PrivateKey: ...


def key_name(origin: str, kid: str) -> str:
    """The note key name of a ledger key: ``<origin>/<kid>`` (unique per key, so rotation keeps both)."""
    safe = "".join(c if c.isalnum() or c in "-_.:" else "-" for c in kid)
    return f"{origin}/{safe}"


def signer_for(origin: str, key: SigningKeyLike) -> NoteSigner:
    return NoteSigner(key_name(origin, key.kid), key.private_key)


def register_keys(
    store: Store,
    origin: str,
    current: SigningKeyLike,
    public_keys: Mapping[str, Ed25519PublicKey],
    now: datetime,
) -> None:
    """Record every ledger public key in the store (so a database alone can be verified); retire old ones."""
    from keyturn.store import StoreError

    known = {k.name for k in store.ledger_keys()}
    keys = dict(public_keys)
    keys.setdefault(current.kid, current.private_key.public_key())
    for kid, public in keys.items():
        verifier = VerifierKey.of(key_name(origin, kid), public)
        if verifier.name not in known:
            with contextlib.suppress(StoreError):  # another replica registered it at the same moment
                store.add_ledger_key(verifier.name, str(verifier), now)
        if kid != current.kid:
            store.retire_ledger_key(verifier.name, now)


@dataclass
class _Delivery:
    url: str
    size: int
    note: str
    attempts: int = 0
    next_try: float = 0.0


class WitnessPublisher:
    def __init__(self, directory: Path | None, urls: Sequence[str], timeout: float = 5.0) -> None:
        self.directory = directory
        self.urls = list(urls)
        self.timeout = timeout
        self.pending: list[_Delivery] = []

    def publish(self, size: int, note: str) -> None:
        if self.directory is not None:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                for name in (f"checkpoint.{size}", "latest"):
                    temporary = self.directory / f".{name}.tmp"
                    temporary.write_text(note, encoding="utf-8")
                    os.replace(temporary, self.directory / name)
            except OSError:
                log.exception("could not write checkpoint %d to witness directory %s", size, self.directory)
        self.pending.extend(_Delivery(url, size, note) for url in self.urls)
        self.deliver()

    def deliver(self) -> None:
        """POST what is due; keep failures for a later round (backoff up to 5 minutes)."""
        if not self.pending:
            return
        now = time.monotonic()
        still: list[_Delivery] = []
        with httpx.Client(timeout=self.timeout) as client:
            for item in self.pending:
                if item.next_try > now:
                    still.append(item)
                    continue
                try:
                    answer = client.post(item.url, content=item.note, headers={"Content-Type": "text/plain"})
                    answer.raise_for_status()
                except httpx.HTTPError as exc:
                    item.attempts += 1
                    item.next_try = now + min(300.0, 2.0**item.attempts)
                    log.warning(
                        "witness %s did not take checkpoint %d (try %d): %s",
                        item.url,
                        item.size,
                        item.attempts,
                        exc,
                    )
                    still.append(item)
        self.pending = still


class Checkpointer:
    def __init__(
        self,
        store: Store,
        signer: NoteSigner,
        origin: str,
        *,
        every: int = 1000,
        interval: float = 60.0,
        witness: WitnessPublisher | None = None,
        tree: LiveTree | None = None,
        clock: Clock = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.signer = signer
        self.origin = origin
        self.every = every
        self.interval = interval
        self.witness = witness or WitnessPublisher(None, ())
        self.tree = tree or LiveTree()
        self.clock = clock
        self.halted: str | None = None
        self._last_size = -1
        self._last_time = time.monotonic()

    def start(self) -> None:
        """Catch up with the log and check it against the newest stored checkpoint."""
        tree = self.tree.sync(self.store)
        stored = self.store.checkpoints()
        if stored:
            newest = stored[-1]
            self._last_size = newest.size
            if newest.size > tree.size:
                self._halt(f"the newest checkpoint covers {newest.size} events but the log has {tree.size}")
            elif tree.root(newest.size).hex() != newest.root_hash:
                self._halt(f"the events up to {newest.size} no longer produce the signed root of that size")
        else:
            self._last_size = 0

    def _halt(self, why: str) -> None:
        self.halted = f"ledger tampering suspected, checkpoint signing stopped: {why}"
        log.critical(self.halted)

    def checkpoint(self, force: bool = False) -> str | None:
        """Sign a checkpoint if one is due (or `force`), returning its note; None when nothing was signed."""
        if self.halted is not None:
            return None
        if self._last_size < 0:
            self.start()
            if self.halted is not None:
                return None
        tree = self.tree.sync(self.store)
        size = tree.size
        if size == 0 or size <= self._last_size:
            return None
        due = size - self._last_size >= self.every or time.monotonic() - self._last_time >= self.interval
        if not (force or due):
            return None
        with self.tree.lock:
            root = tree.root(size)
        now = self.clock()
        note = sign_checkpoint(self.signer, Checkpoint(self.origin, size, root, now))
        self._last_size, self._last_time = size, time.monotonic()
        if not self.store.add_checkpoint(size, root.hex(), note, self.signer.name, now):
            return None  # another replica signed this size first; its note has the same root
        log.info("signed ledger checkpoint %d %s", size, root.hex())
        self.witness.publish(size, note)
        return note

    async def run(self, poll: float = 1.0) -> None:
        """The background loop of a server. Failures are logged and retried on the next round."""
        from anyio import to_thread

        while True:
            try:
                await to_thread.run_sync(self._round)
            except Exception:
                log.exception("ledger checkpoint round failed")
            await asyncio.sleep(min(poll, self.interval))

    def _round(self) -> None:
        self.checkpoint()
        self.witness.deliver()


@contextlib.asynccontextmanager
async def running_checkpointer(
    settings: Settings, store: Store, keyring: Any, tree: LiveTree
) -> AsyncIterator[Checkpointer]:
    """For the server's lifespan: register the keys, follow the log, sign; a final checkpoint at shutdown.

    `tree` is the service's live tree, shared with the auditor API's proofs.
    """
    from anyio import to_thread

    current = keyring.signing_key("ledger")
    origin = settings.ledger.origin
    await to_thread.run_sync(
        lambda: register_keys(store, origin, current, keyring.public_key_map("ledger"), datetime.now(UTC))
    )
    ledger = settings.ledger
    checkpointer = Checkpointer(
        store,
        signer_for(origin, current),
        origin,
        every=ledger.checkpoint_every,
        interval=ledger.checkpoint_interval.total_seconds(),
        witness=WitnessPublisher(ledger.witness_dir, ledger.witness_urls),
        tree=tree,
    )
    task = asyncio.create_task(checkpointer.run())
    try:
        yield checkpointer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        try:  # the clean-shutdown checkpoint: everything appended so far is signed
            await to_thread.run_sync(lambda: checkpointer.checkpoint(force=True))
        except Exception:
            log.exception("could not sign the shutdown checkpoint")
