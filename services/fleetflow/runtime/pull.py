"""Fetching a batch from a JetStream pull consumer without nats-py's per-message wait.

nats-py's `PullSubscription.fetch` takes every message of a batch through `Subscription.next_msg`, which
creates a task, an `asyncio.wait_for` timer and a `uuid4` name per message, although nats-py's reader has
usually queued dozens of them by the time the fetch looks. `fetch` here is the same algorithm (nats-py
2.16's `_fetch_n`: what is already queued, then one `no_wait` pull request, then one lingering request if
that found nothing), with the same requests, status handling (100 heartbeats and 409 skipped; 404 and 408
end a request; any other status is nats-py's `APIError`) and errors; only a message already in the queue is
taken at once, and `next_msg` is called only when the queue is empty and a message must be waited for.
It reads nats-py's private subscription fields: tests/integration/runtime/test_pull.py runs it beside
nats-py's own fetch, so a nats-py release that changes them fails there first."""

import asyncio
import json
import time

import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api

_NO_MORE = (api.StatusCode.NO_MESSAGES, api.StatusCode.REQUEST_TIMEOUT)
_TEMPORARY = (api.StatusCode.NO_MESSAGES, api.StatusCode.CONFLICT, api.StatusCode.REQUEST_TIMEOUT)


def _status(msg: Msg) -> str | None:
    return None if msg.headers is None else msg.headers.get(api.Header.STATUS)


def _processable(status: str | None, msg: Msg) -> bool:
    """nats-py's `_is_processable_msg`: data, or a status that ends a request (False), or an error."""
    if not status:
        return True
    if status in _TEMPORARY:
        return False
    raise nats.js.errors.APIError.from_msg(msg)


async def _next(sub: Subscription, timeout: float | None) -> Msg:
    """`sub.next_msg(timeout)`, without its task and timer when a message is already queued."""
    queue = sub._pending_queue
    if queue.empty() or (timeout is not None and timeout <= 0) or sub._conn.is_closed:
        return await sub.next_msg(timeout)  # waits, times out or raises as nats-py does
    msg: Msg = queue.get_nowait()
    sub._pending_size -= len(msg.data)
    queue.task_done()
    return msg


def _drain_queued(sub: Subscription, msgs: list[Msg]) -> None:
    """Take what earlier requests left queued; their status messages are stale and dropped, as nats-py does."""
    queue = sub._pending_queue
    while not queue.empty():
        msg = queue.get_nowait()
        sub._pending_size -= len(msg.data)
        if not _status(msg):
            msgs.append(msg)


async def _request(psub: JetStreamContext.PullSubscription, batch: int, expires: int | None, no_wait: bool) -> None:
    request: dict[str, int | bool] = {"batch": batch}
    if expires:
        request["expires"] = expires
    if no_wait:
        request["no_wait"] = True
    await psub._nc.publish(psub._nms, json.dumps(request).encode(), psub._deliver)
    await asyncio.sleep(0)


async def fetch(psub: JetStreamContext.PullSubscription, batch: int, timeout: float | None = 5) -> list[Msg]:
    """Up to `batch` messages of `psub`, as `psub.fetch(batch, timeout)` returns them (no heartbeat): what is
    ready at once, else the first to arrive within `timeout` seconds, else a timeout (`FetchTimeoutError` if
    the server answered but sent nothing); after a 408 it may be empty, as nats-py's may."""
    if batch < 2 or psub._sub is None or (timeout is not None and timeout <= 0):
        return await psub.fetch(batch, timeout)  # one message takes nats-py's other path; bad arguments its error
    return await _Fetch(psub, batch, timeout).run()


class _Fetch:
    """One fetch: nats-py's `_fetch_n` step by step, each wait through `_next`."""

    def __init__(self, psub: JetStreamContext.PullSubscription, batch: int, timeout: float | None):
        self.psub, self.sub, self.batch, self.timeout = psub, psub._sub, batch, timeout
        self.start = time.monotonic()
        self.msgs: list[Msg] = []
        self.got_any_response = False  # a heartbeat came: a timeout then is the server's, not the connection's

    def remaining(self) -> float | None:
        return None if self.timeout is None else self.timeout - (time.monotonic() - self.start)

    async def run(self) -> list[Msg]:
        _drain_queued(self.sub, self.msgs)
        expires = int(self.timeout * 1_000_000_000) - 100_000 if self.timeout else None
        # As nats-py: no `expires` on the probe once messages are in hand, or the server ignores no_wait.
        await _request(self.psub, self.batch - len(self.msgs), None if self.msgs else expires, no_wait=True)
        try:
            first = await _next(self.sub, self.timeout)
        except TimeoutError:
            if self.msgs:
                return self.msgs
            raise
        await self.take_probe(first)
        if self.msgs:
            return self.msgs
        return await self.linger()

    async def take_probe(self, first: Msg) -> None:
        """The no_wait request's answer: messages until a 404/408 or the batch is full."""
        status = _status(first)
        if status == api.StatusCode.CONTROL_MESSAGE:
            self.got_any_response = True
            return
        if not _processable(status, first):
            return
        self.msgs.append(first)
        await self.take_rest(self.batch - len(self.msgs))

    async def take_rest(self, attempts: int) -> None:
        """Up to `attempts` more answers (a heartbeat uses one, as in nats-py); a timeout ends it quietly."""
        try:
            for _ in range(attempts):
                deadline = self.remaining()
                if deadline is not None and deadline < 0:
                    return
                msg = await _next(self.sub, deadline)
                status = _status(msg)
                if status in _NO_MORE:
                    return
                if status == api.StatusCode.CONTROL_MESSAGE:
                    self.got_any_response = True
                    continue
                if _processable(status, msg):
                    self.msgs.append(msg)
        except TimeoutError:
            return  # what arrived is returned

    async def linger(self) -> list[Msg]:
        """Nothing was ready: one request that waits on the server for the rest of the timeout."""
        deadline = self.remaining()
        expires = None
        if deadline is not None:
            expires = int(deadline * 1_000_000_000) - 100_000
            if expires <= 0:
                raise TimeoutError
        await _request(self.psub, self.batch, expires, no_wait=False)
        while True:
            try:
                msg = await _next(self.sub, self.remaining())
            except TimeoutError:
                if self.got_any_response:
                    raise nats.js.errors.FetchTimeoutError from None
                raise
            status = _status(msg)
            if status == api.StatusCode.CONTROL_MESSAGE:
                self.got_any_response = True
                continue
            if not status:
                self.msgs.append(msg)
            break  # a message, or a status that ends this request
        await self.take_rest(self.batch - len(self.msgs))
        if not self.msgs and self.got_any_response:
            raise nats.js.errors.FetchTimeoutError
        return self.msgs
