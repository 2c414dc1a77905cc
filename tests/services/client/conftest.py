"""The SDK against a real stack: the jobs tests' in-process stack (NATS, gateway,
scheduler, node), and a short back-off so that a reconnect takes milliseconds."""

import pytest

from ackwire.client import Backoff
from services.jobs.conftest import job_settings, stack, start_stack

__all__ = ["job_settings", "quick_backoff", "stack", "start_stack"]


@pytest.fixture
def quick_backoff() -> Backoff:
    return Backoff(first_s=0.05, factor=2, cap_s=0.5)
