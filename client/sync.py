"""The synchronous client: :class:`~strata.client.aio.AsyncClient` run on an event loop
of its own, in a thread of its own, so that it works the same from a plain script, a
thread, or code that runs an event loop of its own (whose loop it never touches)."""

from __future__ import annotations

import asyncio
import builtins
import os
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, TypeVar

from strata.client.aio import (
    DEFAULT_PAGE,
    DEFAULT_TIMEOUT_S,
    RECONNECT_FOR_S,
    AsyncClient,
    Order,
    TaskId,
    TaskWatch,
)
from strata.common.api_models import (
    AttemptOut,
    BatchCreated,
    ConcurrencyKeyOut,
    Fired,
    FirePage,
    RegionOut,
    Schedule,
    Stats,
    TaskDetail,
    TaskEventData,
    TaskGraph,
    TaskOut,
    TaskPage,
    WorkerOut,
)
from strata.common.models import TaskState
from strata.common.schedules import Catchup, Overlap

T = TypeVar("T")


async def _step(iterator: AsyncIterator[T]) -> builtins.list[T]:
    """The iterator's next item, alone in a list; an empty list at its end."""
    try:
        return [await anext(iterator)]
    except StopAsyncIteration:
        return []


async def _made(make: Callable[[], T]) -> T:
    """``make()``, called in the client's loop (what it makes may need one running)."""
    return make()


class Client:
    """The master's REST API, typed, for code that does not use asyncio; the same
    methods as :class:`AsyncClient`, each returning its answer. ``base_url`` defaults to
    ``$STRATA_API``, else ``http://127.0.0.1:8080``; ``token`` to ``$STRATA_TOKEN``.

    Its event loop runs in a daemon thread from when it is made until :meth:`close` (or
    the end of a ``with``). It may be called from any thread; each call blocks its caller
    until the answer, and Ctrl-C while it waits cancels the request."""

    def __init__(self, base_url: str | None = None, *, timeout: float = DEFAULT_TIMEOUT_S,
                 token: str | None = None, ca: str | os.PathLike[str] | None = None) -> None:
        self._async = AsyncClient(base_url, timeout=timeout, token=token, ca=ca)
        self.base_url = self._async.base_url
        self.timeout = timeout
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"strata-client {self.base_url}")
        self._thread.start()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections, and stop the loop and its thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._async.close(), self._loop).result()
            asyncio.run_coroutine_threadsafe(self._loop.shutdown_asyncgens(),
                                             self._loop).result()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("this client is closed")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a Client cannot be called from its own event loop: "
                               "use AsyncClient there")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt while waiting: the call stops too
            raise

    def _iterate(self, make: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
        iterator = self._call(_made(make))
        try:
            while items := self._call(_step(iterator)):
                yield items[0]
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None and not self._closed:
                self._call(aclose())

    # ---- tasks ----------------------------------------------------------------------

    def submit(self, kind_or_handler: str | Callable[..., Any], /, *args: Any,
               options: Mapping[str, Any] | None = None, **fields: Any) -> TaskOut:
        """See :meth:`AsyncClient.submit`."""
        return self._call(self._async.submit(kind_or_handler, *args, options=options,
                                             **fields))

    def submit_many(self, tasks: Iterable[Mapping[str, Any]]) -> BatchCreated:
        """See :meth:`AsyncClient.submit_many`."""
        return self._call(self._async.submit_many(builtins.list(tasks)))

    def get(self, task_id: TaskId) -> TaskDetail:
        return self._call(self._async.get(task_id))

    def page(self, *, state: TaskState | str | None = None, region: str | None = None,
             kind: str | None = None, order: Order = "asc", limit: int = DEFAULT_PAGE,
             cursor: str | None = None) -> TaskPage:
        return self._call(self._async.page(state=state, region=region, kind=kind,
                                           order=order, limit=limit, cursor=cursor))

    def cancel(self, task_id: TaskId) -> TaskOut:
        return self._call(self._async.cancel(task_id))

    def retry(self, task_id: TaskId) -> TaskOut:
        return self._call(self._async.retry(task_id))

    def attempts(self, task_id: TaskId) -> builtins.list[AttemptOut]:
        return self._call(self._async.attempts(task_id))

    def reprioritize(self, task_id: TaskId, priority: int) -> TaskOut:
        return self._call(self._async.reprioritize(task_id, priority))

    def graph(self, task_id: TaskId, *, depth: int | None = None,
              limit: int | None = None) -> TaskGraph:
        return self._call(self._async.graph(task_id, depth=depth, limit=limit))

    def wait(self, task_id: TaskId, *, timeout: float | None = None) -> TaskDetail:
        """See :meth:`AsyncClient.wait`."""
        return self._call(self._async.wait(task_id, timeout=timeout))

    def watch(self, task_ids: Iterable[TaskId] = (), *, state: TaskState | str | None = None,
              region: str | None = None, on_missed: Callable[[str], object] | None = None,
              reconnect_for: float = RECONNECT_FOR_S) -> SyncTaskWatch:
        """See :meth:`AsyncClient.watch`; ``with client.watch(...) as changes:``
        subscribes on entry. ``on_missed`` is called in the client's own thread."""
        ids = builtins.list(task_ids)
        watch = self._call(_made(lambda: self._async.watch(
            ids, state=state, region=region, on_missed=on_missed,
            reconnect_for=reconnect_for)))
        return SyncTaskWatch(self, watch)

    def list(self, *, state: TaskState | str | None = None, region: str | None = None,
             kind: str | None = None, order: Order = "asc",
             page_size: int = DEFAULT_PAGE) -> Iterator[TaskOut]:
        """See :meth:`AsyncClient.list`."""
        return self._iterate(lambda: self._async.list(
            state=state, region=region, kind=kind, order=order, page_size=page_size))

    # ---- schedules ------------------------------------------------------------------

    def create_schedule(
        self, name: str, *, task: Mapping[str, Any], cron: str | None = None,
        every_s: float | None = None, timezone: str | None = None,
        overlap: Overlap | None = None, catchup: Catchup | None = None,
        start_at: datetime | str | None = None, end_at: datetime | str | None = None,
        paused: bool | None = None,
    ) -> Schedule:
        """See :meth:`AsyncClient.create_schedule`."""
        return self._call(self._async.create_schedule(
            name, task=task, cron=cron, every_s=every_s, timezone=timezone, overlap=overlap,
            catchup=catchup, start_at=start_at, end_at=end_at, paused=paused))

    def schedules(self) -> builtins.list[Schedule]:
        return self._call(self._async.schedules())

    def schedule(self, name: str) -> Schedule:
        return self._call(self._async.schedule(name))

    def change_schedule(self, name: str, **changes: Any) -> Schedule:
        return self._call(self._async.change_schedule(name, **changes))

    def pause(self, name: str) -> Schedule:
        return self._call(self._async.pause(name))

    def resume(self, name: str) -> Schedule:
        return self._call(self._async.resume(name))

    def delete_schedule(self, name: str) -> None:
        self._call(self._async.delete_schedule(name))

    def trigger(self, name: str) -> Fired:
        return self._call(self._async.trigger(name))

    def fires(self, name: str, *, limit: int | None = None,
              before: datetime | str | None = None) -> FirePage:
        return self._call(self._async.fires(name, limit=limit, before=before))

    # ---- concurrency keys -----------------------------------------------------------

    def set_concurrency(self, key: str, limit: int) -> ConcurrencyKeyOut:
        return self._call(self._async.set_concurrency(key, limit))

    def concurrency(self, key: str) -> ConcurrencyKeyOut:
        return self._call(self._async.concurrency(key))

    def concurrency_limits(self) -> builtins.list[ConcurrencyKeyOut]:
        return self._call(self._async.concurrency_limits())

    def clear_concurrency(self, key: str) -> None:
        self._call(self._async.clear_concurrency(key))

    # ---- the cluster ----------------------------------------------------------------

    def stats(self) -> Stats:
        return self._call(self._async.stats())

    def regions(self) -> builtins.list[RegionOut]:
        return self._call(self._async.regions())

    def workers(self) -> builtins.list[WorkerOut]:
        return self._call(self._async.workers())


class SyncTaskWatch:
    """What :meth:`Client.watch` returns: an iterator of task changes, subscribed when
    first read or on entering it (``with``); :meth:`close`, or leaving the ``with``, ends
    the subscription."""

    def __init__(self, client: Client, watch: TaskWatch) -> None:
        self._client = client
        self._watch = watch

    @property
    def resumes(self) -> int:
        """The times its stream was taken up again."""
        return self._watch.resumes

    def __enter__(self) -> SyncTaskWatch:
        self.subscribe()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> SyncTaskWatch:
        return self

    def __next__(self) -> TaskEventData:
        changes = self._client._call(_step(self._watch))
        if not changes:
            raise StopIteration
        return changes[0]

    def subscribe(self) -> None:
        """Return once subscribed: every change from then on will be read."""
        self._client._call(self._watch.subscribe())

    def close(self) -> None:
        if not self._client._closed:
            self._client._call(self._watch.aclose())
