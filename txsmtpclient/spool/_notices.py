"""
The failure notice a :class:`~.delivery.Deliverer` queues for the sender of
a message that could not be delivered (the notice's text is
:mod:`.notice`'s).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from txsmtpclient.spool._outcomes import Blocking, DeliveryAction
from txsmtpclient.spool.envelope import Attempt, Entry, ReplyRecord
from txsmtpclient.spool.notice import failure_notice
from txsmtpclient.spool.queue import EntryNotFound, IQueue

__all__ = ["Notices"]


class Notices:
    """
    Queues failure notices; a base of :class:`~.delivery.Deliverer`, whose
    attributes it uses.
    """

    log: Logger
    queue: IQueue
    blocking: Blocking
    clock: IReactorTime
    hostname: str

    async def _notify(
        self, entry: Entry, attempt: Attempt, action: DeliveryAction, original: bytes | None
    ) -> None:
        """
        Enqueue a failure notice to the sender for the recipients that failed
        permanently in this attempt, or all pending ones when it expired;
        ``original`` is the message as sent (already in memory).
        """
        if action is DeliveryAction.EXPIRED:
            failed: Mapping[str, ReplyRecord] = {
                a: attempt.refused.get(a) or ReplyRecord(attempt.code or 451, attempt.text)
                for a in entry.pending
            }
        else:
            failed = {a: r for a, r in attempt.refused.items() if r.code >= 500}
        # RFC 5321 section 4.5.5: never answer a bounce with a bounce.
        if not failed or not entry.sender:
            return
        if original is None:
            # A message streamed from the queue: read it for the notice.
            try:
                original = await self.blocking(self.queue.read_message, entry.id)
            except (OSError, EntryNotFound):
                original = b""
        notice = failure_notice(
            entry, failed, original, hostname=self.hostname, now=self.clock.seconds()
        )
        try:
            notice_id = await self.blocking(
                functools.partial(
                    self.queue.enqueue,
                    mail_options=() if notice.isascii() else ("BODY=8BITMIME",),
                ),
                notice,
                "",
                [entry.sender],
            )
        except Exception as e:
            self.log.error(
                "Could not queue the failure notice for {id}: {error}", id=entry.id, error=str(e)
            )
            return
        self.log.info(
            "Queued failure notice {notice} to {sender} for {id}",
            notice=notice_id,
            sender=entry.sender,
            id=entry.id,
        )
