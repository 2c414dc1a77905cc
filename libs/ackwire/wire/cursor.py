"""A subscriber's place in a topic, with no I/O: the snapshot, then every event after it,
in order, with no gap and no overlap.

Events reach a subscriber from two places that overlap: the store (the events
after the snapshot, read once on joining, or to fill a gap) and the live feed
(from the moment it subscribed). Each event names the `previous` event of the
topic, so the cursor knows when one is missing. It answers each offer with
what to do: emit it, drop it (seen already), or read the store first.
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


Verdict = Emit | Drop | ReadFirst


class TopicCursor:
    def __init__(self, after: int | None) -> None:
        """`after`: the seq the snapshot reflects, or `None` without a snapshot (then the
        first live event starts the stream; nothing before it is owed)."""
        self._position = after

    @property
    def position(self) -> int | None:
        return self._position

    def offer(self, seq: int, previous: int) -> Verdict:
        if self._position is None:
            self._position = seq
            return Emit()
        if seq <= self._position:
            return Drop()
        if previous > self._position:
            return ReadFirst(after=self._position)
        self._position = seq
        return Emit()

    def skip_to(self, seq: int) -> None:
        """Give up on events up to `seq` (the store no longer has them)."""
        if self._position is None or seq > self._position:
            self._position = seq
