"""An event loop in a background thread, for the tests' own network servers (proxies)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

T = TypeVar("T")


class BackgroundLoop:
    """Runs coroutines on a loop of its own, so that forwarding does not queue behind the
    test's coroutines (a load generator, a request being measured)."""

    def __init__(
        self,
        name: str,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
    ) -> None:
        self._loop = loop_factory()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the background loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    def stop(self, close: Callable[[], Awaitable[None]]) -> None:
        """Await `close()` there, cancel whatever still runs (a stalled pipe never ends by
        itself), then stop the loop and its thread."""

        async def shutdown() -> None:
            await close()
            others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        try:
            self.run(shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()


class Server(Protocol):
    """What a test's own server (a proxy) offers: a port, started and closed on its loop."""

    @property
    def port(self) -> int: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


S = TypeVar("S", bound=Server)


class Threaded(Generic[S]):
    """`server`, run on a BackgroundLoop for the duration of a `with` block."""

    def __init__(
        self,
        server: S,
        name: str,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
    ) -> None:
        self.proxy = server
        self._loop = BackgroundLoop(name, loop_factory)

    @property
    def port(self) -> int:
        return self.proxy.port

    def __enter__(self) -> Self:
        self._loop.start()
        self._loop.run(self.proxy.start())
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self._loop.stop(self.proxy.close)
