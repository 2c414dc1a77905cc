"""A subscriber's cursor in a topic, with no I/O: in order, no overlap, and no gap the
client is not told of, whatever the store still holds and the feed loses."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from ackwire.wire.cursor import Drop, Emit, Gap, ReadFirst, TopicCursor


def test_the_cursor_emits_in_order_and_asks_the_store_for_what_is_missing() -> None:
    cursor = TopicCursor(start=10)  # a snapshot at seq 10
    assert cursor.offer(8, previous=5) == Drop()  # covered by the snapshot
    assert cursor.offer(12, previous=10) == Emit()
    assert cursor.offer(12, previous=10) == Drop()  # seen
    assert cursor.offer(20, previous=15) == ReadFirst(after=12)  # 15 is missing
    assert cursor.offer(15, previous=12, stored=True) == Emit()
    assert cursor.offer(20, previous=15) == Emit()
    assert cursor.position == 20


def test_a_hole_the_store_did_not_fill_is_a_gap_to_tell() -> None:
    cursor = TopicCursor(start=10)
    assert cursor.offer(20, previous=15) == ReadFirst(after=10)
    # The read brought nothing: the store no longer holds 15.
    assert cursor.offer(20, previous=15) == Gap(after=10, before=20)
    assert cursor.offer(20, previous=15) == Emit()  # once told, the event is the next
    assert cursor.position == 20


def test_a_stored_event_the_store_can_not_vouch_for_may_follow_a_gap() -> None:
    cursor = TopicCursor(start=10)
    assert cursor.offer(11, previous=None, stored=True) == Emit()  # nothing fits between
    assert cursor.offer(30, previous=None, stored=True) == Gap(after=11, before=30)
    assert cursor.offer(30, previous=None, stored=True) == Emit()


def test_the_store_is_the_last_resort_a_stored_event_never_asks_for_a_read() -> None:
    cursor = TopicCursor(start=10)
    assert cursor.offer(20, previous=15, stored=True) == Gap(after=10, before=20)


def test_a_live_event_after_nothing_the_store_held_is_checked_in_the_store() -> None:
    """Its previous is not known: the topic's first, or the store forgot the others."""
    cursor = TopicCursor(start=10)
    assert cursor.offer(20, previous=None) == ReadFirst(after=10)
    assert cursor.offer(20, previous=10, stored=True) == Emit()  # the store vouches
    assert cursor.offer(20, previous=None) == Drop()
    assert cursor.offer(30, previous=None) == ReadFirst(after=20)
    assert cursor.offer(30, previous=None) == Gap(after=20, before=30)  # it can not


def test_a_snapshot_sent_again_after_a_gap_covers_what_it_reflects() -> None:
    cursor = TopicCursor(start=10)
    assert cursor.offer(30, previous=None, stored=True) == Gap(after=10, before=30)
    cursor.restore(35)
    assert cursor.offer(30, previous=None, stored=True) == Drop()
    assert cursor.offer(36, previous=35) == Emit()
    cursor.restore(20)  # an older snapshot never takes the cursor back
    assert cursor.position == 36


@dataclass
class Bus:
    """One topic on the bus as its gateway sees it: seqs shared with other topics, a store
    that keeps the last `kept` events of the topic (and may forget the oldest sooner, as
    by age), and the topic's latest snapshot."""

    kept: int
    last_seq: int = 0
    published: list[int] = field(default_factory=list)
    held: list[int] = field(default_factory=list)
    snapshot: int | None = None

    def publish(self, *, other_topic: bool, snapshot: bool) -> tuple[int, int | None] | None:
        """The topic's new event and its previous, as the live feed has them: the last
        event the store held then, if any."""
        self.last_seq += 1
        if other_topic:
            return None
        previous = self.held[-1] if self.held else None
        self.published.append(self.last_seq)
        self.held = [*self.held, self.last_seq][-self.kept :]
        if snapshot:
            self.snapshot = self.last_seq
        return self.last_seq, previous

    def forget_oldest(self, count: int) -> None:
        self.held = self.held[count:]

    def read(
        self, after: int, limit: int, *, vouch: bool
    ) -> tuple[list[tuple[int, int | None]], bool]:
        """As `TopicStore.read`: the first event follows `after` when the store still holds
        `after`, or can tell that nothing between them was forgotten; `vouch=False` is a
        store that can not tell (it may say `None` though nothing was forgotten)."""
        later = [seq for seq in self.held if seq > after]
        events = later[:limit]
        lost_between = events and any(
            after < seq < events[0] and seq not in self.held for seq in self.published
        )
        previous = after if after in self.held or (vouch and not lost_between) else None
        chained: list[tuple[int, int | None]] = []
        for seq in events:
            chained.append((seq, previous))
            previous = seq
        return chained, len(later) <= limit


@dataclass
class Subscriber:
    """What the gateway's member does with the cursor's verdicts (gateway/topics.py)."""

    bus: Bus
    cursor: TopicCursor
    data: st.DataObject
    exact: bool
    """The store always tells whether something was forgotten (else it may not)."""
    sent: list[tuple[str, int]] = field(default_factory=list)
    """("event", seq) and ("snapshot", seq), in the order sent."""
    gaps: list[Gap] = field(default_factory=list)

    def offer(self, seq: int, previous: int | None, *, stored: bool) -> None:
        while True:
            verdict = self.cursor.offer(seq, previous, stored=stored)
            if isinstance(verdict, Emit):
                self.sent.append(("event", seq))
                return
            if isinstance(verdict, Drop):
                return
            if isinstance(verdict, ReadFirst):
                assert not stored, "a stored event asked for a read"
                self.catch_up(before=seq)
            else:
                self.gaps.append(verdict)
                snapshot = self.bus.snapshot
                if snapshot is not None and snapshot >= self.cursor.position:
                    self.sent.append(("snapshot", snapshot))
                    self.cursor.restore(snapshot)

    def catch_up(self, before: int | None) -> None:
        while True:
            limit = self.data.draw(st.integers(1, 4), label="read batch")
            vouch = self.exact or self.data.draw(st.booleans(), label="store vouches")
            events, complete = self.bus.read(self.cursor.position, limit, vouch=vouch)
            for seq, previous in events:
                if before is not None and seq > before:
                    return
                self.offer(seq, previous, stored=True)
            if complete or not events:
                return


_steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("publish"),
            st.booleans(),  # of another topic
            st.booleans(),  # as the snapshot
            st.booleans(),  # lost by the feed
        ),
        st.tuples(st.just("take")),  # the member takes the next live event
        st.tuples(st.just("forget"), st.integers(1, 3)),
    ),
    max_size=40,
)


@dataclass(frozen=True)
class Run:
    start: int
    subscriber: Subscriber
    live: list[int]
    """The topic's events the feed did not lose."""

    @property
    def events(self) -> list[int]:
        return [seq for kind, seq in self.subscriber.sent if kind == "event"]


def run(data: st.DataObject, *, kept: int, forgetful: bool, exact: bool) -> Run:
    """Some events, a subscriber joining, then events, losses and reads in any order;
    the member takes every live event left at the end."""
    bus = Bus(kept=kept)
    for snapshot in data.draw(st.lists(st.booleans(), max_size=6), label="before the join"):
        bus.publish(other_topic=False, snapshot=snapshot)
    start = bus.snapshot
    if start is None:  # as the gateway: the topic's last stored seq, else the stream's
        start = bus.held[-1] if bus.held else bus.last_seq
    subscriber = Subscriber(bus, TopicCursor(start), data, exact)
    if bus.snapshot is not None:
        subscriber.sent.append(("snapshot", bus.snapshot))
        subscriber.catch_up(before=None)
    inbox: list[tuple[int, int | None]] = []
    live: list[int] = []
    for step in data.draw(_steps, label="steps"):
        if step[0] == "publish":
            _, other_topic, snapshot, lost = step
            event = bus.publish(other_topic=other_topic, snapshot=snapshot)
            if event is not None and not lost:
                inbox.append(event)
                live.append(event[0])
        elif step[0] == "take" and inbox:
            subscriber.offer(*inbox.pop(0), stored=False)
        elif step[0] == "forget" and forgetful:
            bus.forget_oldest(step[1])
    for seq, previous in inbox:
        subscriber.offer(seq, previous, stored=False)
    return Run(start, subscriber, live)


@settings(max_examples=400)
@given(data=st.data(), kept=st.integers(1, 6), exact=st.booleans())
def test_in_order_and_every_event_sent_covered_or_told(
    data: st.DataObject, kept: int, exact: bool
) -> None:
    done = run(data, kept=kept, forgetful=True, exact=exact)
    sent = [seq for _, seq in done.subscriber.sent]
    assert sent == sorted(set(sent)), "out of order, or sent twice"
    assert all(seq > done.start for seq in done.events)
    restored = [seq for kind, seq in done.subscriber.sent if kind == "snapshot"]
    for seq in done.live:  # an event the feed brought is sent, or a snapshot sent covers it
        assert seq in done.events or any(seq <= snapshot for snapshot in restored)
    gaps = done.subscriber.gaps
    last = max(sent, default=done.start)
    for seq in done.subscriber.bus.published:
        if done.start < seq <= last:
            assert (
                seq in done.events
                or any(gap.after < seq < gap.before for gap in gaps)
                or any(seq <= snapshot for snapshot in restored)
            ), f"event {seq} was skipped silently"
    if exact:  # then a gap is told only when the store forgot an event of it (or its end)
        held = set(done.subscriber.bus.held)
        for gap in gaps:
            assert any(
                gap.after < seq <= gap.before and seq not in held
                for seq in done.subscriber.bus.published
            ), f"{gap} told, though nothing was lost"


@settings(max_examples=200)
@given(data=st.data())
def test_a_store_that_forgets_nothing_never_makes_a_gap(data: st.DataObject) -> None:
    done = run(data, kept=1000, forgetful=False, exact=True)
    assert done.subscriber.gaps == []
    published = [seq for seq in done.subscriber.bus.published if seq > done.start]
    assert done.events == published[: len(done.events)]  # every one, from the start
    assert set(done.live) <= set(done.events)
