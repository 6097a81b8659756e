"""Reading a stream's stored messages without a consumer: JetStream's batched direct get (nats-server 2.11+).

A consumer is server state that counts against the server's limits and must be created and deleted; a direct
get is a request answered from the stream's store, so reading a device's few messages costs no server state.
The stream must be created with `allow_direct`. One request returns up to `batch` messages, each as its own
reply, then an end-of-batch status (204 "EOB") that says how many more match (`Nats-Num-Pending`)."""

import asyncio
import json
from dataclasses import dataclass

from nats.aio.client import Client

PAGE = 256


class DirectGetError(RuntimeError):
    """The server refused or did not answer a direct get."""


@dataclass(frozen=True)
class StoredMessage:
    seq: int
    subject: str
    data: bytes


async def messages_on(
    nc: Client, stream: str, subject: str, start_seq: int = 1, page: int = PAGE, timeout: float = 5.0
) -> list[StoredMessage]:
    """Every message of `stream` on `subject` (wildcards allowed) from `start_seq` on, oldest first."""
    found: list[StoredMessage] = []
    seq = start_seq
    while True:
        batch, more = await _page(nc, stream, {"seq": seq, "next_by_subj": subject, "batch": page}, timeout)
        found.extend(batch)
        if not batch or not more:
            return found
        seq = batch[-1].seq + 1


async def _page(
    nc: Client, stream: str, request: dict[str, object], timeout: float
) -> tuple[list[StoredMessage], bool]:
    """One batch: its messages, and whether more match after them."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox)
        messages: list[StoredMessage] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                msg = await sub.next_msg(timeout=max(remaining, 0.001))
            except TimeoutError:
                raise DirectGetError(f"direct get on stream {stream!r} got no answer within {timeout} s") from None
            headers = msg.headers or {}
            status = headers.get("Status")
            if status is None:
                messages.append(StoredMessage(int(headers["Nats-Sequence"]), headers["Nats-Subject"], msg.data))
            elif status == "204":  # end of batch
                return messages, int(headers.get("Nats-Num-Pending", "0")) > 0
            elif status == "404":  # nothing (more) matches
                return messages, False
            else:
                raise DirectGetError(
                    f"direct get on stream {stream!r} failed with {status} {headers.get('Description', '')}; the "
                    "stream must allow direct get (allow_direct) on nats-server 2.11 or later"
                )
    finally:
        await sub.unsubscribe()
