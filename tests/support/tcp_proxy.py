"""A loopback TCP proxy and load balancer for fault tests: real sockets, asyncio, its own thread.

    proxy = TcpProxy([("127.0.0.1", 5432)]).start()   # proxy.port forwards to PostgreSQL
    proxy.partition()   # connections are still accepted, but no byte passes either way (a network stall)
    proxy.heal()        # the held bytes flow again
    balancer = TcpProxy([("127.0.0.1", a), ("127.0.0.1", b)]).start()   # round robin; a backend that
                                                                        # refuses is skipped
    proxy.stop()

A partition holds bytes instead of dropping them: what the peers see is a path that stopped answering,
which TCP keepalives cannot detect (this proxy's kernel acknowledges them), exactly as behind a NAT or a
load balancer that lost its upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Sequence
from typing import Self


class TcpProxy:
    def __init__(self, backends: Sequence[tuple[str, int]], port: int = 0) -> None:
        self.backends = list(backends)
        self.port = port
        self.connections = 0  # accepted so far
        self.active = [0] * len(self.backends)  # open connections per backend, now
        self._rotation = itertools.cycle(range(len(self.backends)))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._flowing: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # --- control, from the test's thread ------------------------------------------------------------

    def start(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def partition(self) -> None:
        self._call(lambda: self._require_flowing().clear())

    def heal(self) -> None:
        self._call(lambda: self._require_flowing().set())

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- inside the loop ----------------------------------------------------------------------------

    def _call(self, action: object) -> None:
        async def run() -> None:
            assert callable(action)
            action()

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def _require_flowing(self) -> asyncio.Event:
        assert self._flowing is not None, "start() the proxy first"
        return self._flowing

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        self._require_flowing().set()

    async def _connect_backend(self) -> tuple[int, asyncio.StreamReader, asyncio.StreamWriter] | None:
        for _ in range(len(self.backends)):
            index = next(self._rotation)
            host, port = self.backends[index]
            with contextlib.suppress(OSError, TimeoutError):
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
                return index, reader, writer
        return None

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        backend = await self._connect_backend()
        if backend is None:
            client_writer.close()
            return
        index, backend_reader, backend_writer = backend
        self._writers.update((client_writer, backend_writer))
        self.active[index] += 1
        try:
            await asyncio.gather(
                self._pipe(client_reader, backend_writer), self._pipe(backend_reader, client_writer)
            )
        finally:
            self.active[index] -= 1
            for writer in (client_writer, backend_writer):
                self._writers.discard(writer)
                writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        flowing = self._require_flowing()
        try:
            while True:
                await flowing.wait()
                data = await reader.read(65536)
                if not data:
                    break
                await flowing.wait()  # bytes read just before a partition are held, not delivered
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                if writer.can_write_eof():
                    writer.write_eof()
