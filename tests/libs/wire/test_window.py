"""DeliveryWindow, without sockets: the delivery rules of protocol.md as plain facts and actions."""

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ackwire.wire.window import RETRY_FIRST_S, ConfirmAcks, DeliveryWindow, FetchBacklog, Send


def sends(actions: list[object]) -> list[tuple[int, bool]]:
    return [(a.seq, a.redelivered) for a in actions if isinstance(a, Send)]


def confirms(actions: list[object]) -> list[tuple[int | None, tuple[int, ...], tuple[int, ...]]]:
    """Each confirmation as (upto, singles, released seqs)."""
    return [(a.upto, a.singles, a.seqs) for a in actions if isinstance(a, ConfirmAcks)]


def fetches(actions: list[object]) -> list[FetchBacklog]:
    return [a for a in actions if isinstance(a, FetchBacklog)]


def confirm_all(window: DeliveryWindow[str], actions: list[object]) -> None:
    for action in actions:
        if isinstance(action, ConfirmAcks):
            window.confirmed(action)


def answer(
    window: DeliveryWindow[str],
    fetch: FetchBacklog,
    stored: list[int],
    *,
    now: float = 0.0,
    complete: bool = True,
    leader_last: int | None = None,
) -> None:
    """A read of the store that returned `stored` (seqs after `fetch.after`, in order)."""
    previous = fetch.after
    for seq in stored:
        window.offer(seq, f"m{seq}", previous=previous)
        previous = seq
    last = stored[-1] if stored else fetch.after
    window.read_done(
        fetch,
        now,
        last=last,
        complete=complete,
        leader_last=last if leader_last is None else leader_last,
    )


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
    assert confirms(actions) == [(None, (2,), (2,))]


def test_ack_upto_releases_everything_up_to_it() -> None:
    window = window_with(1, 2, 3, 4, 5)
    window.poll(0)
    assert window.ack_upto(2) == 2
    actions = window.poll(1)
    assert sends(actions) == [(4, False), (5, False)]
    assert confirms(actions) == [(2, (), (1, 2))]


def test_acks_say_when_each_released_message_was_first_sent() -> None:
    window = window_with(1, 2, 3, ack_wait=10.0)
    window.poll(0)
    assert sends(window.poll(10)) == [(1, True), (2, True), (3, True)]  # sent again
    window.ack(2)
    window.ack_upto(1)
    # The first send, not the redelivery: an ack after a lost send shows the wait.
    assert sorted(window.acked_sends()) == [("m1", 0), ("m2", 0)]
    assert window.acked_sends() == []  # each one told once
    window.offer(4, "m4", previous=3)
    window.ack(4)  # acked before it was ever sent: nothing to time
    assert window.acked_sends() == []


def test_single_acks_below_the_first_unacked_fold_into_upto() -> None:
    window = window_with(1, 2, 3)
    window.poll(0)
    window.ack(2)
    window.ack(3)
    first = window.poll(1)
    assert confirms(first) == [(None, (2, 3), (2, 3))]
    confirm_all(window, first)
    window.ack(1)
    assert confirms(window.poll(2)) == [(3, (), (1,))]


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
    assert fetches(actions) == [FetchBacklog(after=0, horizon=66)]
    answer(window, fetches(actions)[0], [2, 65])
    assert sends(window.poll(1)) == [(2, False), (65, False), (66, False)]


def test_a_gap_in_the_live_feed_is_fetched_once_until_answered() -> None:
    window = window_with(1, 2, size=10)
    window.poll(0)
    window.offer(9, "m9", previous=7)  # 7 never arrived live
    assert fetches(window.poll(1)) == [FetchBacklog(after=2, horizon=9)]
    assert fetches(window.poll(2)) == []
    window.offer(7, "m7", previous=2)
    assert sends(window.poll(3)) == [(7, False), (9, False)]


def test_a_complete_read_releases_live_messages_whose_predecessor_is_gone() -> None:
    window: DeliveryWindow[str] = DeliveryWindow(size=10, ack_wait=30)
    window.offer(9, "m9", previous=7)  # live; 7 was acked and deleted long ago
    (fetch,) = fetches(window.poll(0))
    answer(window, fetch, [3, 9])  # the read, started after the live subscription
    assert sends(window.poll(1)) == [(3, False), (9, False)]


def test_a_read_vouches_only_for_what_it_covered() -> None:
    """Hole 1: a gap read in flight while 13 is lost live and 14 arrives must not make
    the window believe it knows 13, and no ack may purge 13 unsent."""
    window = window_with(10, size=10)
    assert sends(window.poll(0)) == [(10, False)]
    window.offer(12, "m12", previous=11)  # 11 lost live
    (fetch,) = fetches(window.poll(0))
    window.offer(14, "m14", previous=13)  # meanwhile 13 is lost live too; 14 arrives
    answer(window, fetch, [11, 12], leader_last=14)  # the read began before 13 was stored
    actions = window.poll(1)
    assert sends(actions) == [(11, False), (12, False)]  # 14 waits for 13
    (again,) = fetches(actions)
    assert again.after == 12
    window.ack_upto(14)  # a client acking everything it was sent, and more
    actions = window.poll(2)
    assert confirms(actions) == [(12, (), (10, 11, 12))]
    confirm_all(window, actions)
    answer(window, again, [13, 14])
    # 13 and 14 were acked ahead by the `upto`: released when known, never sent
    assert confirms(window.poll(4)) == [(14, (), (13, 14))]


def test_a_replica_behind_the_leader_vouches_for_nothing_beyond_its_read() -> None:
    window: DeliveryWindow[str] = DeliveryWindow(size=10, ack_wait=30)
    window.offer(5, "m5", previous=4)
    (fetch,) = fetches(window.poll(0))
    answer(window, fetch, [1], leader_last=5)  # the replica lacks 4 and 5
    assert sends(window.poll(0)) == [(1, False)]
    assert fetches(window.poll(0)) == []  # backed off
    (again,) = fetches(window.poll(RETRY_FIRST_S))
    answer(window, again, [4, 5])
    assert sends(window.poll(1)) == [(4, False), (5, False)]


def test_a_failed_read_is_retried_with_back_off_until_it_succeeds() -> None:
    """Hole 2: a failed read is never forgotten, even with nothing else arriving."""
    window: DeliveryWindow[str] = DeliveryWindow(size=10, ack_wait=30)
    window.resync()  # the pump's first read of the backlog
    (fetch,) = fetches(window.poll(0))
    window.fetch_failed(fetch, now=0)
    assert window.next_deadline() == RETRY_FIRST_S
    assert fetches(window.poll(RETRY_FIRST_S / 2)) == []
    (second,) = fetches(window.poll(RETRY_FIRST_S))
    window.fetch_failed(second, now=1)
    assert window.next_deadline() == 1 + 2 * RETRY_FIRST_S
    (third,) = fetches(window.poll(2))
    answer(window, third, [3])
    assert sends(window.poll(2)) == [(3, False)]
    assert window.next_deadline() == 32  # only the redelivery is due now


def test_resync_reads_the_store_again_from_what_is_known() -> None:
    """Hole 2: after a NATS reconnect the live feed may have lost the last message."""
    window = window_with(1, 2, size=10)
    window.poll(0)
    assert fetches(window.poll(0)) == []
    window.resync()
    (fetch,) = fetches(window.poll(1))
    assert fetch.after == 2
    answer(window, fetch, [5])
    assert sends(window.poll(1)) == [(5, False)]


def test_a_read_superseded_by_a_resync_is_ignored() -> None:
    window = window_with(1, size=10)
    assert sends(window.poll(0)) == [(1, False)]
    window.offer(5, "m5", previous=4)
    (stale,) = fetches(window.poll(0))
    window.resync()
    answer(window, stale, [], leader_last=1)  # would vouch through 5 if it counted
    (fresh,) = fetches(window.poll(0))
    answer(window, fresh, [4, 5])
    assert sends(window.poll(0)) == [(4, False), (5, False)]


def test_a_partial_read_is_continued_when_there_is_room() -> None:
    window: DeliveryWindow[str] = DeliveryWindow(size=2, ack_wait=30, max_unsent=4)
    window.resync()
    (fetch,) = fetches(window.poll(0))
    answer(window, fetch, [1, 2, 3, 4], complete=False)
    actions = window.poll(0)
    assert sends(actions) == [(1, False), (2, False)]
    assert fetches(actions) == [FetchBacklog(after=4, horizon=4)]


def test_a_message_that_waited_on_a_full_window_goes_once_there_is_room() -> None:
    window: DeliveryWindow[str] = DeliveryWindow(size=1, ack_wait=30, max_unsent=2)
    window.offer(1, "m1", previous=0)
    window.offer(2, "m2", previous=1)
    window.offer(4, "m4", previous=3)  # live, ahead of 3: waits
    window.offer(3, "m3", previous=2)  # no room: dropped, still in the store
    first = window.poll(0)
    (fetch,) = fetches(first)
    assert fetch.after == 2
    answer(window, fetch, [3], complete=False)  # the read, stopped at its limit
    sent = sends(first) + sends(window.poll(1))
    for seq in (1, 2, 3):
        window.ack(seq)
        actions = window.poll(seq + 1)
        confirm_all(window, actions)
        sent += sends(actions)
    assert sent == [(1, False), (2, False), (3, False), (4, False)]


def test_unsent_messages_are_bounded_and_dropped_ones_are_fetched_again() -> None:
    window: DeliveryWindow[str] = DeliveryWindow(size=2, ack_wait=30, max_unsent=4)
    for seq in range(1, 11):
        window.offer(seq, f"m{seq}", previous=seq - 1)
    assert window.unsent == 4
    assert window.known_through == 4
    actions = window.poll(0)
    assert sends(actions) == [(1, False), (2, False)]
    assert fetches(actions) == [FetchBacklog(after=4, horizon=9)]  # 5 waits in the store


def test_resumed_backlog_is_marked_redelivered() -> None:
    window: DeliveryWindow[str] = DeliveryWindow(size=5, ack_wait=30)
    window.offer(4, "m4", previous=0, redelivered=True)
    window.offer(5, "m5", previous=4)
    assert sends(window.poll(0)) == [(4, True), (5, False)]


def test_ack_upto_beyond_what_is_known_confirms_only_what_is_known() -> None:
    window = window_with(1, 2)
    window.poll(0)
    window.ack_upto(10**9)
    assert confirms(window.poll(1)) == [(2, (), (1, 2))]


def test_acks_of_messages_not_offered_yet_release_them_when_they_are() -> None:
    """Hole 4: a resumed client flushes acks for what an earlier connection sent, before
    this window has read those messages: they are released, confirmed and accounted
    for when they arrive, never sent."""
    window: DeliveryWindow[str] = DeliveryWindow(size=5, ack_wait=30)
    window.resync()
    (fetch,) = fetches(window.poll(0))
    window.ack(3)  # acked on the old connection's behalf
    window.ack_upto(1)
    answer(window, fetch, [1, 2, 3, 4])
    actions = window.poll(1)
    assert sends(actions) == [(2, False), (4, False)]
    (confirm,) = [a for a in actions if isinstance(a, ConfirmAcks)]
    assert (confirm.upto, confirm.singles) == (1, (3,))
    assert confirm.released == ((1, "m1"), (3, "m3"))


def test_a_failed_confirmation_is_kept_and_made_again() -> None:
    """Hole 4: a later `upto` never covers a failed confirmation silently."""
    window = window_with(1, 2, 3, size=5)
    window.poll(0)
    window.ack(1)
    (first,) = [a for a in window.poll(1) if isinstance(a, ConfirmAcks)]
    window.confirm_failed(first, now=1)
    window.ack_upto(3)
    assert confirms(window.poll(1)) == []  # backing off
    (second,) = [a for a in window.poll(1 + RETRY_FIRST_S) if isinstance(a, ConfirmAcks)]
    assert (second.upto, second.seqs) == (3, (1, 2, 3))


def test_one_confirmation_at_a_time() -> None:
    window = window_with(1, 2, 3, size=5)
    window.poll(0)
    window.ack(1)
    first = window.poll(1)
    window.ack(2)
    assert confirms(window.poll(2)) == []  # the first is still in flight
    assert window.unconfirmed == 2
    confirm_all(window, first)
    assert confirms(window.poll(3)) == [(2, (), (2,))]


def test_confirmation_while_closing_takes_every_ack_read() -> None:
    window = window_with(1, 2, 3, size=5)
    window.poll(0)
    window.ack(3)
    window.ack(1)
    confirm = window.confirmation()
    assert confirm is not None
    assert (confirm.upto, confirm.singles, confirm.seqs) == (1, (3,), (1, 3))
    assert window.confirmation() is None  # in flight


@pytest.mark.parametrize(("size", "ack_wait", "max_unsent"), [(0, 1, 10), (1, 0, 10), (5, 1, 4)])
def test_nonsense_limits_are_refused(size: int, ack_wait: float, max_unsent: int) -> None:
    with pytest.raises(ValueError, match="required"):
        DeliveryWindow(size=size, ack_wait=ack_wait, max_unsent=max_unsent)


class WindowMachine(RuleBasedStateMachine):
    """A window against a model store: live offers lost, late and duplicated, reads that
    take time and may come from a replica behind the leader, reads and confirmations
    that fail (having been applied, or not), and a client that acks what it was sent,
    acks ahead what an earlier connection sent it, and acks `upto` what it handled.

    What is checked: nothing the client did not ack is ever removed from the store;
    whatever the store removes because of an ack is among the messages that
    confirmation released (so it gets its receipt); the window is never exceeded;
    first sends rise; and in the end every stored message was delivered exactly once."""

    def __init__(self) -> None:
        super().__init__()
        self.window: DeliveryWindow[int] = DeliveryWindow(size=4, ack_wait=10, max_unsent=8)
        self.stored: list[int] = []  # the leader's copy of the session's queue
        self.replica_has = 0  # how many of `stored` (by position) the replica has
        self.removed: set[int] = set()
        self.late_live: list[tuple[int, int]] = []  # (seq, previous) still on their way
        self.now = 0.0
        self.first_sent: list[int] = []
        self.sent: set[int] = set()
        self.acked: set[int] = set()  # everything the client acked, however
        self.delivered: list[int] = []
        self.reads: list[FetchBacklog] = []
        self.confirms: list[ConfirmAcks[int]] = []

    # -- the store ---------------------------------------------------------

    def _present(self, *, replica: bool) -> list[int]:
        copy = self.stored[: self.replica_has] if replica else self.stored
        return [s for s in copy if s not in self.removed]

    def _apply(self, actions: list[object]) -> None:
        for action in actions:
            if isinstance(action, Send):
                assert action.seq in self.stored
                assert action.seq not in self.removed, "sent a message already delivered"
                if action.seq not in self.sent:
                    self.first_sent.append(action.seq)
                    self.sent.add(action.seq)
            elif isinstance(action, ConfirmAcks):
                self.confirms.append(action)
            elif isinstance(action, FetchBacklog):
                self.reads.append(action)

    def _remove(self, confirm: ConfirmAcks[int]) -> None:
        present = set(self._present(replica=False))
        upto = confirm.upto if confirm.upto is not None else 0
        removed = {s for s in present if s <= upto} | (present & set(confirm.singles))
        assert removed <= self.acked, "the store removed a message nobody acked"
        assert removed <= set(confirm.seqs), "removed without being accounted for"
        self.removed |= removed

    # -- rules ---------------------------------------------------------------

    @rule(gap=st.integers(1, 3), live=st.sampled_from(["now", "late", "lost"]))
    def publish(self, gap: int, live: str) -> None:
        previous = self.stored[-1] if self.stored else 0
        seq = previous + gap
        self.stored.append(seq)
        if live == "now":
            self.window.offer(seq, seq, previous=previous)
        elif live == "late":
            self.late_live.append((seq, previous))

    @precondition(lambda self: bool(self.late_live))
    @rule(data=st.data())
    def late_live_arrives(self, data: st.DataObject) -> None:
        seq, previous = self.late_live.pop(data.draw(st.integers(0, len(self.late_live) - 1)))
        self.window.offer(seq, seq, previous=previous)

    @precondition(lambda self: self.replica_has < len(self.stored))
    @rule()
    def replica_catches_up(self) -> None:
        self.replica_has += 1

    @precondition(lambda self: bool(self.reads))
    @rule(from_leader=st.booleans(), limit=st.integers(1, 4), fail=st.booleans())
    def answer_read(self, from_leader: bool, limit: int, fail: bool) -> None:
        fetch = self.reads.pop(0)
        if fail:
            self.window.fetch_failed(fetch, self.now)
            return
        after = [s for s in self._present(replica=not from_leader) if s > fetch.after]
        batch = after[:limit]
        previous = fetch.after
        for seq in batch:
            self.window.offer(seq, seq, previous=previous)
            previous = seq
        leader = self._present(replica=False)
        self.window.read_done(
            fetch,
            self.now,
            last=previous,
            complete=len(batch) == len(after),
            leader_last=leader[-1] if leader else 0,
        )

    @precondition(lambda self: bool(self.confirms))
    @rule(outcome=st.sampled_from(["confirmed", "failed", "failed_after_applying"]))
    def answer_confirm(self, outcome: str) -> None:
        confirm = self.confirms.pop(0)
        if outcome != "failed":
            self._remove(confirm)
        if outcome == "confirmed":
            self.window.confirmed(confirm)
            self.delivered += confirm.seqs
        else:
            self.window.confirm_failed(confirm, self.now)

    @precondition(lambda self: bool(self.sent - self.acked))
    @rule(data=st.data())
    def ack_one(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(sorted(self.sent - self.acked)))
        self.window.ack(seq)
        self.acked.add(seq)

    @precondition(lambda self: bool(set(self.stored) - self.sent - self.acked))
    @rule(data=st.data())
    def ack_ahead(self, data: st.DataObject) -> None:
        """The client acks what an earlier connection of the session sent it."""
        seq = data.draw(st.sampled_from(sorted(set(self.stored) - self.sent - self.acked)))
        self.window.ack(seq)
        self.acked.add(seq)

    @precondition(lambda self: bool(self.first_sent))
    @rule(data=st.data())
    def ack_upto(self, data: st.DataObject) -> None:
        # A client acks "upto" only what it has seen, with everything before it handled.
        handled = [s for s in self.first_sent if all(p in self.sent for p in self.stored if p <= s)]
        if handled:
            upto = data.draw(st.sampled_from(handled))
            self.window.ack_upto(upto)
            self.acked |= {s for s in self.stored if s <= upto}

    @rule()
    def nats_reconnected(self) -> None:
        self.window.resync()

    @rule(dt=st.floats(0, 15))
    def tick(self, dt: float) -> None:
        self.now += dt
        self._apply(self.window.poll(self.now))

    # -- invariants ----------------------------------------------------------

    @invariant()
    def never_more_outstanding_than_the_window(self) -> None:
        assert self.window.outstanding <= self.window.size

    @invariant()
    def first_sends_rise(self) -> None:
        assert self.first_sent == sorted(self.first_sent)
        assert len(self.first_sent) == len(set(self.first_sent))

    @invariant()
    def nothing_unacked_is_forgotten(self) -> None:
        assert (self.sent - self.acked) <= set(self.window.owed())

    def teardown(self) -> None:
        # Everything settles: the replica catches up, reads and confirmations succeed,
        # late live messages arrive, and the client acks whatever it gets.
        self.replica_has = len(self.stored)
        # A live message is lost only with a signal (a slow consumer, a reconnect).
        self.window.resync()
        for seq, previous in self.late_live:
            self.window.offer(seq, seq, previous=previous)
        for _ in range(300):
            while self.reads:
                self.answer_read(from_leader=True, limit=4, fail=False)
            while self.confirms:
                self.answer_confirm("confirmed")
            self.now += 11
            self._apply(self.window.poll(self.now))
            # Sent again (an ack ahead the window could not keep): handled again, acked again.
            for seq in sorted(self.sent - self.removed):
                self.window.ack(seq)
                self.acked.add(seq)
            if set(self.stored) <= self.removed and not self.confirms and not self.reads:
                break
        assert set(self.stored) <= self.removed, "a stored message was never delivered"
        assert sorted(self.delivered) == sorted(set(self.delivered)), "delivered twice"
        assert set(self.delivered) == set(self.stored), "removed without its receipt"


TestWindowMachine = WindowMachine.TestCase
TestWindowMachine.settings = settings(max_examples=400, stateful_step_count=80, deadline=None)
