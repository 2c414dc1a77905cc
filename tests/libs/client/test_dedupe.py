"""SeenIds: bounded, least recently seen out first, optionally kept in the client's state."""

from pathlib import Path

import pytest

from ackwire.client.dedupe import SeenIds
from ackwire.client.store import ClientState


def test_the_oldest_id_goes_first_once_full() -> None:
    seen = SeenIds(capacity=2)
    for delivery_id in ("a", "b", "a", "c"):  # "a" seen again: "b" is now the oldest
        seen.add(delivery_id)
    assert ("a" in seen, "b" in seen, "c" in seen, len(seen)) == (True, False, True, 2)


def test_a_file_keeps_the_ids_for_the_next_process_within_the_bound(tmp_path: Path) -> None:
    state = ClientState(tmp_path / "state.db")
    first = SeenIds(capacity=3, state=state)
    for n in range(5):
        first.add(f"id-{n}")
    state.close()
    again = SeenIds(capacity=3, state=ClientState(tmp_path / "state.db"))
    assert [f"id-{n}" in again for n in range(5)] == [False, False, True, True, True]
    again.add("id-5")
    assert "id-2" not in again


def test_a_capacity_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="capacity"):
        SeenIds(capacity=0)
