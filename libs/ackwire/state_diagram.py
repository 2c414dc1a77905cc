"""A transition table as a Mermaid state diagram: the docs draw the gateway's connection
phases and the client's from their tables, and tests check the two agree."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TypeVar

PhaseT = TypeVar("PhaseT", bound=enum.Enum)
InputT = TypeVar("InputT", bound=enum.Enum)


def mermaid(
    transitions: Mapping[tuple[PhaseT, InputT], PhaseT], initial: PhaseT, final: PhaseT
) -> str:
    """`(phase, input) -> phase` as `stateDiagram-v2`, leaving out what stays put."""
    lines = ["stateDiagram-v2", f"    [*] --> {initial.value}"]
    for (phase, step), after in transitions.items():
        if phase is not after:
            lines.append(f"    {phase.value} --> {after.value}: {step.value}")
    lines.append(f"    {final.value} --> [*]")
    return "\n".join(lines)
