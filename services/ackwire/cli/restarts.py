"""When `ackwire up` starts a dead child again: bounded exponential back-off.

No I/O and no clock: the supervisor says how long the life that just ended
lasted, and is told how long to wait. Like Kubernetes' CrashLoopBackOff, a
child that keeps dying waits longer each time, up to a cap, and one that stayed
up a while starts over from the shortest wait.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    first_s: float = 1.0
    """The wait after a death that follows a stable life: long enough that a Ctrl-C
    reaching the children before `up` is not mistaken for a crash."""
    factor: float = 2.0
    max_s: float = 30.0
    stable_s: float = 30.0
    """A life at least this long resets the wait to `first_s`."""

    def __post_init__(self) -> None:
        if not (0 < self.first_s <= self.max_s and self.factor >= 1 and self.stable_s > 0):
            raise ValueError("0 < first_s <= max_s, factor >= 1 and stable_s > 0 are required")


class RestartBackoff:
    """The waits for one child, across its deaths."""

    def __init__(self, policy: RestartPolicy | None = None) -> None:
        self._policy = policy or RestartPolicy()
        self._next_s = self._policy.first_s

    def after_death(self, lived_s: float) -> float:
        """The child died after `lived_s` seconds up (0 if it never became ready):
        how many seconds to wait before starting it again."""
        if lived_s >= self._policy.stable_s:
            self._next_s = self._policy.first_s
        wait_s = self._next_s
        self._next_s = min(wait_s * self._policy.factor, self._policy.max_s)
        return wait_s
