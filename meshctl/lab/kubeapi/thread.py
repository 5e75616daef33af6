"""`KubeApiThread`: a Kubernetes API double on its own event loop in a daemon thread.

For synchronous callers (the sync ``kubernetes`` client in tests, ``meshctl`` code under test):
``with KubeApiThread() as double:`` starts it and returns the running `KubeApiDouble`, whose
direct methods are thread-safe; leaving the block closes its watches and stops the loop.
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType
from typing import Any

from meshctl.lab.kubeapi.server import KubeApiDouble

__all__ = ["KubeApiThread"]


class KubeApiThread:
    """A `KubeApiDouble` on its own event loop in a daemon thread, for synchronous callers."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._double: KubeApiDouble | None = None

    def __enter__(self) -> KubeApiDouble:
        double = KubeApiDouble(**self._kwargs)
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(double.start())
            except BaseException as e:  # reported to __enter__'s caller below
                failure.append(e)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        thread = threading.Thread(target=run, name="kubeapi-double", daemon=True)
        thread.start()
        if not started.wait(30):
            raise RuntimeError("the Kubernetes API double did not start within 30 s")
        if failure:
            thread.join()
            raise RuntimeError(
                f"the Kubernetes API double did not start: {failure[0]}"
            ) from failure[0]
        self._loop, self._thread, self._double = loop, thread, double
        return double

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        loop, thread, double = self._loop, self._thread, self._double
        if loop is None or thread is None or double is None:
            return
        self._loop = self._thread = self._double = None
        asyncio.run_coroutine_threadsafe(double.stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
