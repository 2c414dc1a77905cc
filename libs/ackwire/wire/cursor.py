"""A subscriber's place in a topic, with no I/O: the snapshot, then every event after it,
in order, with no overlap, and no gap the client is not told of.

Events reach a subscriber from two places that overlap: the store (the events
after the snapshot, read on joining, or to fill a hole) and the live feed (from
the moment it subscribed). A live event names the `previous` event of the
topic, so the cursor knows when one is missing and asks for a store read. The
store keeps only the last events of each topic: what it no longer holds is
lost, and the cursor says so (`Gap`) rather than skip it. It answers each offer
with what to do: emit it, drop it (seen already), read the store first, or tell
the client of a gap.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Emit:
    pass


@dataclass(frozen=True, slots=True)
class Drop:
    """At or before the cursor: the snapshot covers it, or it was emitted."""


@dataclass(frozen=True, slots=True)
class ReadFirst:
    """Events between `after` and this one are missing: read them from the store,
    offer them, then offer this one again."""

    after: int


@dataclass(frozen=True, slots=True)
class Gap:
    """The topic's events with `after < seq < before` may be lost: the store no longer
    holds them. Tell the client, then offer this event (at `before`) again."""

    after: int
    before: int


Verdict = Emit | Drop | ReadFirst | Gap


class TopicCursor:
    def __init__(self, start: int) -> None:
        """`start`: the seq the client's state reflects: its snapshot's, or, without one,
        where the topic stood when it joined (nothing up to it is owed)."""
        self._position = start
        self._read_for: int | None = None

    @property
    def position(self) -> int:
        return self._position

    def offer(self, seq: int, previous: int | None, *, stored: bool = False) -> Verdict:
        """An event and the topic's event before it, `None` when not known (the store held
        none of the topic's events before it, or no longer holds them). `stored`: read
        from the store, the last resort, so what is missing before it is a gap; before
        a live event, the store is read first."""
        if seq <= self._position:
            return Drop()
        if seq == self._position + 1 or (previous is not None and previous <= self._position):
            self._position = seq
            return Emit()
        if stored or self._read_for == seq:
            # Nothing left to read: the store did not bring what came before `seq`.
            gap = Gap(after=self._position, before=seq)
            self._position = seq - 1  # the client is told; `seq` is next
            return gap
        self._read_for = seq
        return ReadFirst(after=self._position)

    def restore(self, snapshot: int) -> None:
        """The client was sent the snapshot at `snapshot` (after a gap): it covers every
        event up to it."""
        self._position = max(self._position, snapshot)
