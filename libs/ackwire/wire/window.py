"""A session's delivery window, with no I/O: what to send, what to send again, what to confirm.

The gateway feeds it facts (a message for the session, "everything up to N is
known", a client ack) and polls it with the current time; it answers with
actions (`Send`, `ConfirmAcks`, `FetchBacklog`). Time is passed in, never read.

The rules (shared/protocol.md, Delivery):

- at most `size` deliveries are outstanding (sent, not acked);
- on one connection, messages are first sent in `seq` order, and a message is
  never first-sent before every earlier message of the session is known, so
  a late backlog read can not be overtaken by live messages;
- a message not acked within `ack_wait` is sent again, with its `seq`;
- an ack releases messages; the broker learns of it only through
  `ConfirmAcks`, and only the broker's confirmation makes a message delivered.

Messages arrive from two places that overlap: the store (the backlog) and the
live feed. Each offer names the `previous` message of the session's queue;
a message whose predecessor is known extends the known prefix, one whose
predecessor is missing waits, and the window asks for the gap to be read from
the store (`FetchBacklog`). Duplicates are ignored by `seq`. Unsent messages
are bounded by `max_unsent`: past it, offers are dropped (they stay in the
store) and fetched again once there is room.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Send(Generic[T]):
    """Send this message now, with its `seq`."""

    seq: int
    message: T
    redelivered: bool


@dataclass(frozen=True, slots=True)
class ConfirmAcks:
    """Tell the broker the client acked these: every message up to `upto` (when set),
    and each of `singles` (all above `upto`). `released` lists the messages of this
    window the acks released; once the broker confirms, those are delivered."""

    upto: int | None
    singles: tuple[int, ...]
    released: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class FetchBacklog:
    """Read the session's stored messages after `after` and offer them; then call
    `read_complete` if the read reached the end of the queue, else `more_in_store`."""

    after: int


Action = Send[T] | ConfirmAcks | FetchBacklog


@dataclass(slots=True)
class _Entry(Generic[T]):
    message: T
    redelivered: bool
    sent_at: float | None = None


@dataclass(slots=True)
class _Waiting(Generic[T]):
    previous: int
    entry: _Entry[T] = field(repr=False)


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
        self._waiting: dict[int, _Waiting[T]] = {}
        self._acked: set[int] = set()  # released here, not yet handed to ConfirmAcks
        self._claimed_upto = 0  # the client's highest `ack upto`, clamped to what was offered
        self._confirmed_upto = 0
        self._fetch_in_flight = False
        self._lowest_dropped: int | None = None  # offered past a bound; still in the store

    # -- facts in --------------------------------------------------------

    def offer(self, seq: int, message: T, *, previous: int, redelivered: bool = False) -> None:
        """A message of the session; `previous` is the `seq` before it in the queue (0: none)."""
        if seq <= self._known_through or seq in self._waiting or seq <= previous:
            return  # known already, released, or not a sane link
        entry = _Entry(message, redelivered)
        if previous > self._known_through:
            if len(self._waiting) >= self.max_unsent:
                self._drop(seq)
                return
            self._waiting[seq] = _Waiting(previous, entry)
            self._highest_offered = max(self._highest_offered, seq)
            return
        if len(self._unsent) >= self.max_unsent:
            self._drop(seq)  # it stays in the store; fetched when there is room
            return
        self._extend(seq, entry)
        self._absorb_waiting()

    def caught_up(self, through: int) -> None:
        """Every message up to `through` has been offered, or no longer exists."""
        self._fetch_in_flight = False
        if self._lowest_dropped is not None:  # offered, yes, but not kept: not known
            through = min(through, self._lowest_dropped - 1)
        if through <= self._known_through:
            return
        self._known_through = through
        self._highest_offered = max(self._highest_offered, through)
        for seq in sorted(s for s in self._waiting if s <= through):
            self._unsent[seq] = self._waiting.pop(seq).entry
        self._absorb_waiting()

    def read_complete(self) -> None:
        """A read of the store, started after the live feed was subscribed, reached the
        end of the queue: every message up to the highest offered is known or gone (one
        stored after the read comes through the live feed, behind its predecessors)."""
        self.caught_up(self._highest_offered)

    def more_in_store(self, after: int) -> None:
        """A read stopped at its batch limit: messages after `after` are still to be read."""
        self._fetch_in_flight = False
        self._drop(after + 1)

    def fetch_failed(self) -> None:
        """The store could not be read; the window will ask again."""
        self._fetch_in_flight = False

    def ack(self, seq: int) -> int:
        """The client acked one message. Returns how many messages this released (0 or 1)."""
        for pending in (self._outstanding, self._unsent):
            if pending.pop(seq, None) is not None:
                self._acked.add(seq)
                return 1
        if self._waiting.pop(seq, None) is not None:
            self._acked.add(seq)
            return 1
        return 0

    def ack_upto(self, seq: int) -> int:
        """The client acked every message up to `seq`. Returns how many this released."""
        released = 0
        for pending in (self._outstanding, self._unsent, self._waiting):
            for s in [s for s in pending if s <= seq]:
                del pending[s]
                self._acked.add(s)
                released += 1
        self._claimed_upto = max(self._claimed_upto, min(seq, self._highest_offered))
        return released

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
            self._outstanding[seq] = entry
            actions.append(Send(seq, entry.message, redelivered=entry.redelivered))
        self._absorb_waiting()
        confirm = self._take_confirmation()
        if confirm is not None:
            actions.append(confirm)
        if self._needs_fetch():
            self._fetch_in_flight = True
            self._lowest_dropped = None
            actions.append(FetchBacklog(after=self._known_through))
        return actions

    def next_deadline(self) -> float | None:
        """When `poll` next has a redelivery to make, if anything is outstanding."""
        due = [e.sent_at for e in self._outstanding.values() if e.sent_at is not None]
        return min(due) + self.ack_wait if due else None

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

    def owed(self) -> list[int]:
        """Every message known here and not acked, in `seq` order."""
        return sorted({*self._outstanding, *self._unsent, *self._waiting})

    # -- inside ----------------------------------------------------------

    def _extend(self, seq: int, entry: _Entry[T]) -> None:
        self._unsent[seq] = entry
        self._known_through = seq
        self._highest_offered = max(self._highest_offered, seq)

    def _absorb_waiting(self) -> None:
        """Messages whose predecessor is now known join the known prefix, in order."""
        while True:
            ready = [s for s, w in self._waiting.items() if w.previous <= self._known_through]
            if not ready or len(self._unsent) >= self.max_unsent:
                return
            seq = min(ready)
            if seq <= self._known_through:  # already covered by a `caught_up`
                self._unsent[seq] = self._waiting.pop(seq).entry
                continue
            self._extend(seq, self._waiting.pop(seq).entry)

    def _take_confirmation(self) -> ConfirmAcks | None:
        claimed = self._claimed_upto > self._confirmed_upto
        if not self._acked and not claimed:
            return None
        unacked = self.owed()
        through = max(self._known_through, self._claimed_upto)
        acked_through = min(unacked[0] - 1, through) if unacked else through
        upto = acked_through if acked_through > self._confirmed_upto else None
        if upto is not None:
            self._confirmed_upto = upto
        released = tuple(sorted(self._acked))
        self._acked.clear()
        singles = tuple(s for s in released if s > self._confirmed_upto)
        if upto is None and not released:
            return None
        return ConfirmAcks(upto=upto, singles=singles, released=released)

    def _needs_fetch(self) -> bool:
        if self._fetch_in_flight or len(self._unsent) > self.max_unsent // 2:
            return False
        return self._lowest_dropped is not None or bool(self._waiting)

    def _drop(self, seq: int) -> None:
        if self._lowest_dropped is None or seq < self._lowest_dropped:
            self._lowest_dropped = seq
