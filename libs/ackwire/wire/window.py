"""A session's delivery window, with no I/O: what to send, what to send again, what to confirm.

The gateway feeds it facts (a message for the session, what a read of the store
found, a client ack, the store's answer to a confirmation) and polls it with the
current time; it answers with actions (`Send`, `ConfirmAcks`, `FetchBacklog`).
Time is passed in, never read.

The rules (docs/protocol.md, Delivery):

- at most `size` deliveries are outstanding (sent, not acked);
- on one connection, messages are first sent in `seq` order, and a message is
  never first-sent before every earlier message of the session is known, so
  a late backlog read can not be overtaken by live messages;
- a message not acked within `ack_wait` is sent again, with its `seq`;
- an ack releases messages; the broker learns of it only through
  `ConfirmAcks`, and only the broker's confirmation makes a message delivered.

Messages arrive from two places that overlap: the store (the backlog) and the
live feed. Each offer names the `previous` message of the session's queue; a
message whose predecessor is known extends the known prefix (`known_through`),
one whose predecessor is missing waits, and the window asks for the gap to be
read from the store (`FetchBacklog`). Duplicates are ignored by `seq`.

The known prefix is what the window vouches for: every message up to it was
offered here, or is gone from the store. Only a chain of offers or a read of
the store extends it, and a read vouches only for what it covered: the
messages it returned, and beyond them only when the stream's leader confirms
the read saw the end of the queue (a replica answering a read can lag behind
the leader, and the live feed can drop messages while a read is in flight).
A confirmation never reaches past the known prefix, so the store never removes
a message this window did not see acked.

Unsent messages are bounded by `max_unsent`: past it, offers are dropped (they
stay in the store) and read again once there is room. A failed read or
confirmation is retried with back-off; `resync` (the live feed may have lost
messages, e.g. across a NATS reconnect) has the store read again from the
known prefix.

A client may ack a message before this window has offered it (it saw it on an
earlier connection of the session): the ack is kept (bounded) and releases the
message when it is offered, so it is confirmed, and accounted for, like any
other.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

#: Back-off of a failed read or confirmation: doubling from the first, up to the cap.
RETRY_FIRST_S = 0.1
RETRY_CAP_S = 5.0


@dataclass(frozen=True, slots=True)
class Send(Generic[T]):
    """Send this message now, with its `seq`."""

    seq: int
    message: T
    redelivered: bool


@dataclass(frozen=True, slots=True)
class ConfirmAcks(Generic[T]):
    """Tell the store the client acked these: remove every message up to `upto` (when
    set) and each of `singles` (all above `upto`), then report `confirmed` or
    `confirm_failed`. `released` are the messages the acks released, with their seqs:
    once the store confirms, exactly these are delivered."""

    upto: int | None
    singles: tuple[int, ...]
    released: tuple[tuple[int, T], ...]

    @property
    def seqs(self) -> tuple[int, ...]:
        return tuple(seq for seq, _ in self.released)


@dataclass(frozen=True, slots=True)
class FetchBacklog:
    """Read the session's stored messages after `after`, offer them (each one's
    `previous` being the one before it in the read), then report `read_done`."""

    after: int
    horizon: int
    """The highest seq offered when the read was asked for: a read that the stream's
    leader confirms reached the end of the queue vouches for everything up to here."""


Action = Send[T] | ConfirmAcks[T] | FetchBacklog


@dataclass(slots=True)
class _Entry(Generic[T]):
    message: T
    redelivered: bool
    acked: bool = False  # acked before it was offered: released as soon as it is known
    sent_at: float | None = None
    first_sent_at: float | None = None


@dataclass(slots=True)
class _Retry:
    """When a failed operation may run again."""

    failures: int = 0
    not_before: float = 0.0

    def failed(self, now: float) -> None:
        self.failures += 1
        self.not_before = now + min(RETRY_CAP_S, RETRY_FIRST_S * 2 ** (self.failures - 1))

    def succeeded(self) -> None:
        self.failures, self.not_before = 0, 0.0


class DeliveryWindow(Generic[T]):
    def __init__(self, *, size: int, ack_wait: float, max_unsent: int = 1024) -> None:
        if size < 1 or ack_wait <= 0 or max_unsent < size:
            raise ValueError("size >= 1, ack_wait > 0 and max_unsent >= size are required")
        self.size = size
        self.ack_wait = ack_wait
        self.max_unsent = max_unsent
        self._known_through = 0  # every message <= this was offered here, or is gone
        self._highest_offered = 0
        self._unsent: dict[int, _Entry[T]] = {}
        self._outstanding: dict[int, _Entry[T]] = {}
        self._waiting: dict[int, _Entry[T]] = {}  # offered before their predecessor was known
        # Heaps of the waiting messages: by (previous, seq), then, once their predecessor
        # is known, by seq. `_absorb_waiting` looks only at what it absorbs, never at all
        # that waits (that was a scan of every waiting message on every offer and poll).
        self._waiting_by_previous: list[tuple[int, int]] = []
        self._ready_by_seq: list[int] = []
        self._released: dict[int, T] = {}  # acked, not yet handed to a confirmation
        self._acked_sends: list[tuple[T, float]] = []  # drained by `acked_sends`
        self._acked_ahead: set[int] = set()  # acked before they were offered here
        self._claimed_upto = 0  # the client's highest `ack upto`
        self._confirmed_upto = 0
        self._confirming: ConfirmAcks[T] | None = None
        self._confirm_retry = _Retry()
        self._fetching: FetchBacklog | None = None
        self._fetch_retry = _Retry()
        self._lowest_dropped: int | None = None  # offered past a bound; still in the store

    # -- facts in --------------------------------------------------------

    def offer(self, seq: int, message: T, *, previous: int, redelivered: bool = False) -> None:
        """A message of the session; `previous` is the `seq` before it in the queue (0: none)."""
        if seq <= self._known_through or seq in self._waiting or seq <= previous:
            return  # known already, released, or not a sane link
        waits = previous > self._known_through
        if len(self._waiting if waits else self._unsent) >= self.max_unsent:
            self._drop(seq)  # it stays in the store; read again when there is room
            return
        entry = _Entry(message, redelivered, acked=self._acked_before(seq))
        if waits:
            self._waiting[seq] = entry
            heapq.heappush(self._waiting_by_previous, (previous, seq))
            self._highest_offered = max(self._highest_offered, seq)
            return
        self._extend(seq, entry)
        self._absorb_waiting()

    def read_done(
        self,
        fetch: FetchBacklog,
        now: float,
        *,
        last: int,
        complete: bool,
        leader_last: int | None,
    ) -> None:
        """The read `fetch` asked for was made and its messages offered. `last` is the
        highest seq it returned (`fetch.after` if none); `complete` says the read reached
        the end of what the answering replica holds; `leader_last` is the seq of the
        session's newest message according to the stream's leader, asked after the read
        (`None` when not asked)."""
        if fetch is not self._fetching:
            return  # superseded (see `resync`)
        self._fetching = None
        through = max(last, fetch.after)
        if complete and leader_last is not None and leader_last <= through:
            # The leader had nothing the read did not see: every message offered before
            # the read was asked for is known, or gone.
            through = max(through, fetch.horizon)
            self._fetch_retry.succeeded()
        elif complete:  # a replica behind the leader answered: read again, a little later
            self._drop(through + 1)
            self._fetch_retry.failed(now)
        else:  # stopped at its limit: read on once there is room
            self._drop(through + 1)
            self._fetch_retry.succeeded()
        self._caught_up(through)

    def fetch_failed(self, fetch: FetchBacklog, now: float) -> None:
        """The read `fetch` asked for failed; it is asked for again after a back-off."""
        if fetch is not self._fetching:
            return
        self._fetching = None
        self._drop(fetch.after + 1)
        self._fetch_retry.failed(now)

    def resync(self) -> None:
        """The live feed may have lost messages: read the store again from what is known."""
        self._fetching = None  # an answer to a read already in flight is ignored
        self._drop(self._known_through + 1)
        self._fetch_retry.succeeded()

    def ack(self, seq: int) -> int:
        """The client acked one message. Returns how many messages this released (0 or 1)."""
        for pending in (self._outstanding, self._unsent):
            entry = pending.pop(seq, None)
            if entry is not None:
                self._release(seq, entry)
                return 1
        waiting = self._waiting.get(seq)
        if waiting is not None:
            waiting.acked = True  # released once its place in the queue is known
            return 0
        if seq > self._known_through and seq > self._claimed_upto:
            self._remember_ahead(seq)
        return 0

    def ack_upto(self, seq: int) -> int:
        """The client acked every message up to `seq`. Returns how many this released."""
        released = 0
        for pending in (self._outstanding, self._unsent):
            for s in [s for s in pending if s <= seq]:
                self._release(s, pending.pop(s))
                released += 1
        for s, waiting in self._waiting.items():
            if s <= seq:
                waiting.acked = True
        self._claimed_upto = max(self._claimed_upto, seq)
        self._acked_ahead = {s for s in self._acked_ahead if s > seq}
        return released

    def _release(self, seq: int, entry: _Entry[T]) -> None:
        self._released[seq] = entry.message
        if entry.first_sent_at is not None:
            self._acked_sends.append((entry.message, entry.first_sent_at))

    def acked_sends(self) -> list[tuple[T, float]]:
        """Each message the acks released since the last call, with when it was first sent
        (on `poll`'s clock): how long the client took to ack it, a lost send included."""
        acked, self._acked_sends = self._acked_sends, []
        return acked

    def confirmed(self, confirm: ConfirmAcks[T]) -> None:
        """The store confirmed `confirm`: its released messages are delivered."""
        if confirm is self._confirming:
            self._confirming = None
            self._confirm_retry.succeeded()
            if confirm.upto is not None:
                self._confirmed_upto = max(self._confirmed_upto, confirm.upto)

    def confirm_failed(self, confirm: ConfirmAcks[T], now: float) -> None:
        """The store did not confirm `confirm`: its messages are still acked and still
        stored; the confirmation is made again after a back-off."""
        if confirm is self._confirming:
            self._confirming = None
            self._released.update(confirm.released)
            self._confirm_retry.failed(now)

    # -- actions out -----------------------------------------------------

    def poll(self, now: float) -> list[Action[T]]:
        """What to do now: redeliveries due, sends the window has room for,
        acks to confirm, a gap to fetch."""
        actions: list[Action[T]] = []
        self._absorb_waiting()  # room may have freed since a waiting message arrived
        for seq in sorted(self._outstanding):
            entry = self._outstanding[seq]
            if entry.sent_at is not None and entry.sent_at + self.ack_wait <= now:
                entry.sent_at = now
                actions.append(Send(seq, entry.message, redelivered=True))
        while self._unsent and len(self._outstanding) < self.size:
            seq = min(self._unsent)
            entry = self._unsent.pop(seq)
            entry.sent_at = now
            if entry.first_sent_at is None:
                entry.first_sent_at = now
            self._outstanding[seq] = entry
            actions.append(Send(seq, entry.message, redelivered=entry.redelivered))
        self._absorb_waiting()
        if now >= self._confirm_retry.not_before:
            confirm = self.confirmation()
            if confirm is not None:
                actions.append(confirm)
        if self._needs_fetch(now):
            self._fetching = FetchBacklog(after=self._known_through, horizon=self._highest_offered)
            self._lowest_dropped = None  # the read covers everything after the known prefix
            actions.append(self._fetching)
        return actions

    def confirmation(self) -> ConfirmAcks[T] | None:
        """The confirmation to make now of what the client acked (also while closing,
        when nothing is sent any more), or `None`: nothing to confirm, or one in flight."""
        if self._confirming is not None:
            return None
        if not self._released:
            return None
        # Everything up to the known prefix was offered here or is gone, and below the
        # first message still owed all of it was acked: one purge removes it.
        owed = self.owed()
        upto = min(self._known_through, owed[0] - 1) if owed else self._known_through
        released = tuple(sorted(self._released.items()))
        self._released.clear()
        self._confirming = ConfirmAcks(
            upto=upto if upto > self._confirmed_upto else None,
            singles=tuple(seq for seq, _ in released if seq > max(upto, self._confirmed_upto)),
            released=released,
        )
        return self._confirming

    def next_deadline(self) -> float | None:
        """When `poll` next has something to do that no new fact will prompt: a
        redelivery, or a retry after a back-off."""
        due = [e.sent_at + self.ack_wait for e in self._outstanding.values() if e.sent_at]
        if self._released and self._confirming is None:
            due.append(self._confirm_retry.not_before)
        if self._wants_fetch():
            due.append(self._fetch_retry.not_before)
        return min(due) if due else None

    # -- views -----------------------------------------------------------

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    @property
    def unsent(self) -> int:
        return len(self._unsent)

    @property
    def known_through(self) -> int:
        return self._known_through

    @property
    def confirm_retry_at(self) -> float:
        """When a failed confirmation may be made again (0: at once)."""
        return self._confirm_retry.not_before

    @property
    def unconfirmed(self) -> int:
        """Messages the client acked whose removal the store has not confirmed yet."""
        in_flight = 0 if self._confirming is None else len(self._confirming.released)
        return len(self._released) + in_flight

    def owed(self) -> list[int]:
        """Every message known here and not acked, in `seq` order."""
        waiting = (s for s, entry in self._waiting.items() if not entry.acked)
        return sorted({*self._outstanding, *self._unsent, *waiting})

    # -- inside ----------------------------------------------------------

    def _acked_before(self, seq: int) -> bool:
        if seq <= self._claimed_upto:
            return True
        if seq in self._acked_ahead:
            self._acked_ahead.discard(seq)
            return True
        return False

    def _remember_ahead(self, seq: int) -> None:
        # Bounded: past it the ack is forgotten, and the message, sent again, acked again.
        if len(self._acked_ahead) < self.max_unsent:
            self._acked_ahead.add(seq)

    def _extend(self, seq: int, entry: _Entry[T]) -> None:
        self._known(seq, entry)
        self._known_through = seq
        self._highest_offered = max(self._highest_offered, seq)

    def _known(self, seq: int, entry: _Entry[T]) -> None:
        if entry.acked:
            self._release(seq, entry)
        else:
            self._unsent[seq] = entry

    def _absorb_waiting(self) -> None:
        """Messages whose predecessor is now known join the known prefix, in order."""
        while True:
            # The known prefix only grows: a message ready once stays ready.
            while (
                self._waiting_by_previous and self._waiting_by_previous[0][0] <= self._known_through
            ):
                heapq.heappush(self._ready_by_seq, heapq.heappop(self._waiting_by_previous)[1])
            # Known meanwhile by a read (`_caught_up`), which took it from `_waiting`: its
            # seq is below every message still waiting, so it is on top here.
            while self._ready_by_seq and self._ready_by_seq[0] not in self._waiting:
                heapq.heappop(self._ready_by_seq)
            if not self._ready_by_seq or len(self._unsent) >= self.max_unsent:
                return
            seq = heapq.heappop(self._ready_by_seq)
            entry = self._waiting.pop(seq)
            if seq <= self._known_through:  # already covered by a read
                self._known(seq, entry)
                continue
            self._extend(seq, entry)

    def _caught_up(self, through: int) -> None:
        """Every message up to `through` has been offered, or no longer exists."""
        if self._lowest_dropped is not None:  # offered, yes, but not kept: not known
            through = min(through, self._lowest_dropped - 1)
        if through <= self._known_through:
            self._absorb_waiting()
            return
        self._known_through = through
        self._highest_offered = max(self._highest_offered, through)
        for seq in sorted(s for s in self._waiting if s <= through):
            self._known(seq, self._waiting.pop(seq))
        self._absorb_waiting()

    def _wants_fetch(self) -> bool:
        if self._fetching is not None or len(self._unsent) > self.max_unsent // 2:
            return False
        return self._lowest_dropped is not None or bool(self._waiting)

    def _needs_fetch(self, now: float) -> bool:
        return self._wants_fetch() and now >= self._fetch_retry.not_before

    def _drop(self, seq: int) -> None:
        if self._lowest_dropped is None or seq < self._lowest_dropped:
            self._lowest_dropped = seq
