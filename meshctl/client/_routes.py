"""The local route table: a copy of `GET /v1/routes` kept in sync, answering in microseconds.

`follow` is the one implementation of the sync: it asks `GET /v1/routes` with the ETag it
holds (`If-None-Match`) and `?wait=` (a long poll: the controller answers when the generation
changes, or 304 when the wait runs out). A server that ignores `wait` answers 304 at once; then
`follow` waits out `poll_interval` instead of spinning. When the controller goes away, the last
table keeps answering (fail static), `age` grows, and `follow` retries with back-off.

`AsyncRoutes` runs `follow` as a task on the caller's event loop; `SyncRoutes` runs it on an
event loop of its own in a daemon thread. Readers never lock: each load swaps one reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from meshctl.client._errors import (
    Forbidden,
    MeshError,
    NotFound,
    TableNotLoaded,
    Unauthorized,
    Unreachable,
    from_response,
)
from meshctl.wire import schemas as s

log = logging.getLogger("meshctl.client")

LONG_POLL_SLACK_S = 10.0


@dataclass(frozen=True, slots=True)
class WatchOptions:
    wait: float = 25.0  # the long poll: seconds the controller may hold a request
    poll_interval: float = 1.0  # at most one request per this when the server answers 304 at once
    backoff_min: float = 0.5
    backoff_max: float = 10.0


@dataclass(frozen=True, slots=True)
class _Loaded:
    table: s.RouteTableOut
    etag: str | None
    routes: dict[tuple[str, str], s.RouteOut]
    regions: frozenset[str]


def _index(table: s.RouteTableOut, etag: str | None) -> _Loaded:
    routes = {(r.src, r.dst): r for r in table.routes}
    regions = frozenset(r for pair in routes for r in pair)
    return _Loaded(table, etag, routes, regions)


class RouteTable:
    """The local copy and what is known about its freshness."""

    def __init__(self) -> None:
        self._loaded: _Loaded | None = None
        self._confirmed_at: float | None = None  # monotonic time the server last said "this is current"
        self.connected = False
        self.last_error: MeshError | None = None
        self.requests = 0  # requests the watch has made

    # --- reading (any thread, no lock, no request) -------------------------------------------
    def get(self, src: str, dst: str) -> s.RouteOut:
        """The route from src to dst in the local table (the shared model: do not mutate it)."""
        loaded = self._loaded
        if loaded is None:
            raise TableNotLoaded("the local route table was never loaded: call routes.watch() first")
        route = loaded.routes.get((src, dst))
        if route is not None:
            return route
        for name, rid in (("src", src), ("dst", dst)):
            if rid not in loaded.regions:
                raise NotFound(f"{name}: unknown region {rid!r}", status=404, field=name)
        return s.RouteOut(
            src=src,
            dst=dst,
            path=[src],
            rtt_ms=0.0,
            cost=0.0,
            via_relay=False,
            reachable=True,
            generation=loaded.table.generation,
        )

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    @property
    def generation(self) -> int | None:
        """The generation of the local copy (None before the first load)."""
        loaded = self._loaded
        return None if loaded is None else loaded.table.generation

    @property
    def table(self) -> s.RouteTableOut | None:
        """The whole local copy, as the controller sent it."""
        loaded = self._loaded
        return None if loaded is None else loaded.table

    @property
    def age(self) -> float | None:
        """Seconds since the controller last confirmed the local copy is current."""
        at = self._confirmed_at
        return None if at is None else time.monotonic() - at

    # --- writing (the watch only) -------------------------------------------------------------
    def _load(self, loaded: _Loaded) -> None:
        self._loaded = loaded
        self._confirm()

    def _confirm(self) -> None:
        self._confirmed_at = time.monotonic()
        if not self.connected and self.last_error is not None:
            log.info("route table: the controller answers again (generation %s)", self.generation)
        self.connected, self.last_error = True, None

    def _lost(self, err: MeshError) -> None:
        if self.connected or self.last_error is None:
            log.warning("route table: %s; serving generation %s", err, self.generation)
        self.connected, self.last_error = False, err

    def _first_load_done(self) -> bool:
        """True once loaded; raises a refusal (401/403) that retrying will not cure."""
        if self._loaded is not None:
            return True
        if isinstance(self.last_error, Unauthorized | Forbidden):
            raise self.last_error
        return False

    def _timed_out(self, timeout: float) -> MeshError:
        return self.last_error or Unreachable(f"no route table from the controller within {timeout:g} s")


async def follow(http: httpx.AsyncClient, table: RouteTable, opts: WatchOptions, notify: Callable[[], None]) -> None:
    """Keep `table` in sync with the controller until cancelled; `notify` after every attempt."""
    delay = opts.backoff_min
    while True:
        started = time.monotonic()
        etag = table._loaded.etag if table._loaded is not None else None
        headers = {"If-None-Match": etag} if etag else None
        params = {"wait": opts.wait} if etag and opts.wait > 0 else None
        pace = True
        try:
            table.requests += 1
            resp = await http.get("/v1/routes", headers=headers, params=params, timeout=opts.wait + LONG_POLL_SLACK_S)
            if resp.status_code == 304:
                table._confirm()
            elif resp.status_code == 200:
                new_etag = resp.headers.get("ETag")
                parsed = await asyncio.to_thread(s.RouteTableOut.model_validate_json, resp.content)
                table._load(_index(parsed, new_etag))
                pace = new_etag is None  # with an ETag the next request is a long poll: ask at once
            else:
                raise from_response(resp.status_code, resp.content, resp.reason_phrase, str(resp.request.url))
        except httpx.HTTPError as exc:  # transport errors, and a body cut off mid-way
            table._lost(Unreachable(f"cannot reach the controller at {http.base_url} ({type(exc).__name__})"))
        except MeshError as exc:
            table._lost(exc)
        except ValueError as exc:  # a body that is not a route table
            table._lost(MeshError(f"the controller sent a route table this client cannot read: {exc}"))
        else:
            notify()
            delay = opts.backoff_min
            elapsed = time.monotonic() - started
            if pace and elapsed < opts.poll_interval:
                await asyncio.sleep(opts.poll_interval - elapsed)
            continue
        notify()
        await asyncio.sleep(delay * random.uniform(0.8, 1.2))
        delay = min(delay * 2, opts.backoff_max)


class AsyncRoutes(RouteTable):
    """The local route table of an `AsyncClient`, synced by a task on the running event loop."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        super().__init__()
        self._http = http
        self._task: asyncio.Task[None] | None = None

    @property
    def watching(self) -> bool:
        return self._task is not None and not self._task.done()

    async def watch(self, timeout: float | None = 10.0, *, wait: float = 25.0, poll_interval: float = 1.0) -> None:
        """Start keeping the local copy in sync; wait up to `timeout` s for the first table
        (None: do not wait). Raises (and stops) if it is refused or does not come in time."""
        if not self.watching:
            changed = asyncio.Event()
            opts = WatchOptions(wait=wait, poll_interval=poll_interval)
            self._changed = changed
            self._task = asyncio.create_task(follow(self._http, self, opts, changed.set), name="meshctl-routes")
        if timeout is None:
            return
        deadline = time.monotonic() + timeout
        try:
            while not self._first_load_done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._timed_out(timeout)
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), left)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop syncing (the local copy keeps answering)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class SyncRoutes(RouteTable):
    """The local route table of a `Client`, synced by an event loop in a daemon thread."""

    def __init__(self, base_url: str, headers: dict[str, str], timeout: float) -> None:
        super().__init__()
        self._client_args = {"base_url": base_url, "headers": headers, "timeout": timeout}
        self._thread: threading.Thread | None = None
        self._changed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = threading.Event()

    @property
    def watching(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def watch(self, timeout: float | None = 10.0, *, wait: float = 25.0, poll_interval: float = 1.0) -> None:
        """Start keeping the local copy in sync; wait up to `timeout` s for the first table
        (None: do not wait). Raises (and stops) if it is refused or does not come in time."""
        if not self.watching:
            self._started.clear()
            opts = WatchOptions(wait=wait, poll_interval=poll_interval)
            self._thread = threading.Thread(target=self._main, args=(opts,), name="meshctl-routes", daemon=True)
            self._thread.start()
            self._started.wait()
        if timeout is None:
            return
        deadline = time.monotonic() + timeout
        try:
            with self._changed:
                while not self._first_load_done():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise self._timed_out(timeout)
                    self._changed.wait(left)
        except BaseException:
            self.stop()
            raise

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _main(self, opts: WatchOptions) -> None:
        async def run() -> None:
            self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
            self._started.set()
            async with httpx.AsyncClient(**self._client_args) as http:  # type: ignore[arg-type]
                with contextlib.suppress(asyncio.CancelledError):
                    await follow(http, self, opts, self._notify)

        try:
            asyncio.run(run())
        finally:
            self._started.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop syncing (the local copy keeps answering); returns when the thread has ended."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(task.cancel)
        thread.join(timeout)
