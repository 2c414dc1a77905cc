"""DeliveryWindow, without sockets: the delivery rules of protocol.md as plain facts and actions."""

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ackwire.wire.window import ConfirmAcks, DeliveryWindow, FetchBacklog, Send


def sends(actions: list[object]) -> list[tuple[int, bool]]:
    return [(a.seq, a.redelivered) for a in actions if isinstance(a, Send)]


def confirms(actions: list[object]) -> list[ConfirmAcks]:
    return [a for a in actions if isinstance(a, ConfirmAcks)]


def window_with(*seqs: int, size: int = 3, ack_wait: float = 30.0) -> DeliveryWindow[str]:
    window: DeliveryWindow[str] = DeliveryWindow(size=size, ack_wait=ack_wait)
    previous = 0
    for seq in seqs:
        window.offer(seq, f"m{seq}", previous=previous)
        previous = seq
    return window


def test_sends_in_seq_order_up_to_the_window() -> None:
    window = window_with(2, 5, 7, 9, 11)
    assert sends(window.poll(0)) == [(2, False), (5, False), (7, False)]
    assert window.outstanding == 3
    assert sends(window.poll(1)) == []  # full: nothing more until an ack


def test_an_ack_makes_room_for_the_next_message() -> None:
    window = window_with(1, 2, 3, 4)
    window.poll(0)
    assert window.ack(2) == 1
    actions = window.poll(1)
    assert sends(actions) == [(4, False)]
    assert confirms(actions) == [ConfirmAcks(upto=None, singles=(2,), released=(2,))]


def test_ack_upto_releases_everything_up_to_it() -> None:
    window = window_with(1, 2, 3, 4, 5)
    window.poll(0)
    assert window.ack_upto(2) == 2
    actions = window.poll(1)
    assert sends(actions) == [(4, False), (5, False)]
    assert confirms(actions) == [ConfirmAcks(upto=2, singles=(), released=(1, 2))]


def test_single_acks_below_the_first_unacked_fold_into_upto() -> None:
    window = window_with(1, 2, 3)
    window.poll(0)
    window.ack(2)
    window.ack(3)
    assert confirms(window.poll(1)) == [ConfirmAcks(upto=None, singles=(2, 3), released=(2, 3))]
    window.ack(1)
    assert confirms(window.poll(2)) == [ConfirmAcks(upto=3, singles=(), released=(1,))]


def test_an_unacked_message_is_sent_again_after_ack_wait_with_its_seq() -> None:
    window = window_with(1, 2, size=2, ack_wait=30)
    window.poll(100)
    assert window.next_deadline() == 130
    assert sends(window.poll(129.9)) == []
    window.ack(2)
    assert sends(window.poll(130)) == [(1, True)]
    assert sends(window.poll(160)) == [(1, True)]
    window.ack(1)
    assert window.next_deadline() is None


def test_acking_twice_or_acking_the_unknown_releases_nothing() -> None:
    window = window_with(1, 2)
    window.poll(0)
    assert window.ack(1) == 1
    assert window.ack(1) == 0
    assert window.ack(99) == 0
    assert window.ack_upto(1) == 0


def test_duplicates_from_backlog_and_live_are_sent_once() -> None:
    window: DeliveryWindow[str] = DeliveryWindow(size=10, ack_wait=30)
    window.offer(3, "m3", previous=0)
    window.offer(3, "m3", previous=0)
    window.offer(6, "m6", previous=3)
    window.offer(6, "m6", previous=3)
    assert sends(window.poll(0)) == [(3, False), (6, False)]
    window.ack(3)
    window.offer(3, "m3", previous=0)  # an acked message read again from the store
    assert sends(window.poll(1)) == []


def test_a_live_message_waits_for_the_backlog_before_it() -> None:
    window: DeliveryWindow[str] = DeliveryWindow(size=10, ack_wait=30)
    window.offer(66, "live", previous=65)  # the backlog (..65) is not read yet
    actions = window.poll(0)
    assert sends(actions) == []
    assert FetchBacklog(after=0) in actions
    window.offer(2, "m2", previous=0)
    window.offer(65, "m65", previous=2)
    window.caught_up(65)
    assert sends(window.poll(1)) == [(2, False), (65, False), (66, False)]


def test_a_gap_in_the_live_feed_is_fetched_once_until_answered() -> None:
    window = window_with(1, 2, size=10)
    window.poll(0)
    window.offer(9, "m9", previous=7)  # 7 never arrived live
    assert FetchBacklog(after=2) in window.poll(1)
    assert not [a for a in window.poll(2) if isinstance(a, FetchBacklog)]
    window.offer(7, "m7", previous=2)
    assert sends(window.poll(3)) == [(7, False), (9, False)]


def test_caught_up_with_nothing_left_lets_waiting_messages_go() -> None:
    window = window_with(1, size=10)
    window.poll(0)
    window.offer(9, "m9", previous=7)
    window.poll(1)
    window.caught_up(8)  # 7 was acked and deleted before the read
    assert sends(window.poll(2)) == [(9, False)]


def test_a_complete_read_releases_live_messages_whose_predecessor_is_gone() -> None:
    window: DeliveryWindow[str] = DeliveryWindow(size=10, ack_wait=30)
    window.offer(9, "m9", previous=7)  # live; 7 was acked and deleted long ago
    window.poll(0)
    window.offer(3, "m3", previous=0)  # the read, started after the live subscription
    window.read_complete()
    assert sends(window.poll(1)) == [(3, False), (9, False)]


def test_a_partial_read_is_continued_when_there_is_room() -> None:
    window: DeliveryWindow[str] = DeliveryWindow(size=2, ack_wait=30, max_unsent=4)
    for seq in (1, 2, 3, 4):
        window.offer(seq, f"m{seq}", previous=seq - 1)
    window.more_in_store(after=4)
    actions = window.poll(0)
    assert sends(actions) == [(1, False), (2, False)]
    assert FetchBacklog(after=4) in actions


def test_a_message_that_waited_on_a_full_window_goes_once_there_is_room() -> None:
    window: DeliveryWindow[str] = DeliveryWindow(size=1, ack_wait=30, max_unsent=2)
    window.offer(1, "m1", previous=0)
    window.offer(2, "m2", previous=1)
    window.offer(4, "m4", previous=3)  # live, ahead of 3: waits
    window.offer(3, "m3", previous=2)  # no room: dropped, still in the store
    first = window.poll(0)
    assert FetchBacklog(after=2) in first
    window.offer(3, "m3", previous=2)  # the read, stopped at its limit
    window.more_in_store(after=3)
    sent = sends(first) + sends(window.poll(1))
    for seq in (1, 2, 3):
        window.ack(seq)
        sent += sends(window.poll(seq + 1))
    assert sent == [(1, False), (2, False), (3, False), (4, False)]


def test_unsent_messages_are_bounded_and_dropped_ones_are_fetched_again() -> None:
    window: DeliveryWindow[str] = DeliveryWindow(size=2, ack_wait=30, max_unsent=4)
    for seq in range(1, 11):
        window.offer(seq, f"m{seq}", previous=seq - 1)
    assert window.unsent == 4
    assert window.known_through == 4
    actions = window.poll(0)
    assert sends(actions) == [(1, False), (2, False)]
    assert FetchBacklog(after=4) in actions  # 5.. stay in the store until there is room


def test_resumed_backlog_is_marked_redelivered() -> None:
    window: DeliveryWindow[str] = DeliveryWindow(size=5, ack_wait=30)
    window.offer(4, "m4", previous=0, redelivered=True)
    window.caught_up(4)
    window.offer(5, "m5", previous=4)
    assert sends(window.poll(0)) == [(4, True), (5, False)]


def test_ack_upto_beyond_what_was_offered_is_clamped() -> None:
    window = window_with(1, 2)
    window.poll(0)
    window.ack_upto(10**9)
    assert confirms(window.poll(1)) == [ConfirmAcks(upto=2, singles=(), released=(1, 2))]


@pytest.mark.parametrize(("size", "ack_wait", "max_unsent"), [(0, 1, 10), (1, 0, 10), (5, 1, 4)])
def test_nonsense_limits_are_refused(size: int, ack_wait: float, max_unsent: int) -> None:
    with pytest.raises(ValueError, match="required"):
        DeliveryWindow(size=size, ack_wait=ack_wait, max_unsent=max_unsent)


class WindowMachine(RuleBasedStateMachine):
    """Random offers (live, out of order, duplicated), acks and ticks against a model queue."""

    def __init__(self) -> None:
        super().__init__()
        self.window: DeliveryWindow[int] = DeliveryWindow(size=4, ack_wait=10, max_unsent=8)
        self.queue: list[int] = []  # the session's stored queue, in seq order
        self.now = 0.0
        self.first_sent: list[int] = []
        self.sent: set[int] = set()
        self.acked: set[int] = set()
        self.confirmed: set[int] = set()

    def _apply(self, actions: list[object]) -> None:
        for action in actions:
            if isinstance(action, Send):
                assert action.seq in self.queue
                assert action.seq not in self.acked, "an acked message was sent again"
                if action.seq not in self.sent:
                    self.first_sent.append(action.seq)
                    self.sent.add(action.seq)
            elif isinstance(action, ConfirmAcks):
                assert set(action.released) <= self.acked
                assert set(action.singles) <= self.acked
                if action.upto is not None:
                    below = {s for s in self.queue if s <= action.upto}
                    assert below <= self.acked, "upto would purge a message nobody acked"
                    self.confirmed |= below
                self.confirmed |= set(action.singles)
            elif isinstance(action, FetchBacklog):
                self._read_store(action.after)

    def _read_store(self, after: int) -> None:
        previous = after
        for seq in self.queue:
            if seq > after and seq not in self.acked:
                self.window.offer(seq, seq, previous=previous)
                previous = seq
        self.window.caught_up(self.queue[-1] if self.queue else after)

    @rule(gap=st.integers(1, 3), deliver_live=st.booleans())
    def publish(self, gap: int, deliver_live: bool) -> None:
        previous = self.queue[-1] if self.queue else 0
        seq = previous + gap
        self.queue.append(seq)
        if deliver_live:  # a live message may be lost; the store still has it
            self.window.offer(seq, seq, previous=previous)

    @precondition(lambda self: bool(self.queue))
    @rule(data=st.data())
    def duplicate_live(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.queue) - 1))
        self.window.offer(self.queue[i], self.queue[i], previous=self.queue[i - 1] if i else 0)

    @precondition(lambda self: bool(self.sent - self.acked))
    @rule(data=st.data())
    def ack_one(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(sorted(self.sent - self.acked)))
        assert self.window.ack(seq) == 1
        self.acked.add(seq)

    @precondition(lambda self: bool(self.first_sent))
    @rule(data=st.data())
    def ack_upto(self, data: st.DataObject) -> None:
        # A client acks "upto" only what it has seen, with everything before it handled.
        handled = [s for s in self.first_sent if all(p in self.sent for p in self.queue if p <= s)]
        if handled:
            upto = data.draw(st.sampled_from(handled))
            self.window.ack_upto(upto)
            self.acked |= {s for s in self.queue if s <= upto}

    @rule(dt=st.floats(0, 15))
    def tick(self, dt: float) -> None:
        self.now += dt
        self._apply(self.window.poll(self.now))

    @invariant()
    def never_more_outstanding_than_the_window(self) -> None:
        assert self.window.outstanding <= self.window.size

    @invariant()
    def first_sends_rise(self) -> None:
        assert self.first_sent == sorted(self.first_sent)
        assert len(self.first_sent) == len(set(self.first_sent))

    @invariant()
    def nothing_unacked_is_forgotten(self) -> None:
        # Everything sent and unacked is still owed by the window.
        assert (self.sent - self.acked) <= set(self.window.owed())

    def teardown(self) -> None:
        # Drain: read the store, ack everything sent, until all is delivered.
        for _ in range(200):
            # The gateway re-reads the store on every (re)subscribe: a lost tail is found.
            self._read_store(self.window.known_through)
            self.now += 11
            self._apply(self.window.poll(self.now))
            for seq in sorted(self.sent - self.acked):
                self.window.ack(seq)
                self.acked.add(seq)
            if self.acked >= set(self.queue):
                break
        self._apply(self.window.poll(self.now))
        assert set(self.queue) <= self.acked, "a stored message was never sent"
        assert self.confirmed >= set(self.queue), "an ack was never confirmed"


TestWindowMachine = WindowMachine.TestCase
