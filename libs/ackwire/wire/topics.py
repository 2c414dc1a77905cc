"""Topic names and the patterns of a token's `topics` claim, with no I/O.

A topic is 1-16 tokens of `[A-Za-z0-9_=-]` (1-64 each) joined by `.`, at most 256
characters: so a topic is safe to place in a subject as it is, and no client
input reaches a subject unchecked. Patterns (in tokens, never in `subscribe`)
add NATS's wildcards: `*` for exactly one token, `>` as the last token for one
or more. A client allowed `pipeline.42` can never read `pipeline.>`: wildcards
are not topic names, so they cannot be subscribed to.
"""

from __future__ import annotations

import re

TOPIC_MAX = 256
# `=` lets a presence topic carry any user id (`presence.<user token>`, see subjects).
_TOKEN = re.compile(r"[A-Za-z0-9_=-]{1,64}")
_TOKENS_MAX = 16


class BadTopicError(ValueError):
    """Not a topic name."""


def topic_name(text: str) -> str:
    """`text` if it is a topic name; raises `BadTopicError` saying why not."""
    tokens = text.split(".")
    if len(text) > TOPIC_MAX or len(tokens) > _TOKENS_MAX:
        raise BadTopicError(f"a topic is at most {TOPIC_MAX} characters and {_TOKENS_MAX} tokens")
    for token in tokens:
        if token in ("*", ">"):
            raise BadTopicError("wildcards belong in token claims, not in a subscribe")
        if not _TOKEN.fullmatch(token):
            raise BadTopicError("a topic is tokens of A-Z a-z 0-9 _ = - joined by '.'")
    return text


def pattern_matches(pattern: str, topic: str) -> bool:
    """Whether a claim pattern covers `topic` (a valid topic name), as NATS matches
    subjects. A malformed pattern matches nothing."""
    wanted = pattern.split(".")
    tokens = topic.split(".")
    for i, want in enumerate(wanted):
        if want == ">":
            return i == len(wanted) - 1 and len(tokens) > i
        if i >= len(tokens):
            return False
        if want != "*" and (want != tokens[i] or not _TOKEN.fullmatch(want)):
            return False
    return len(tokens) == len(wanted)


def allowed(patterns: tuple[str, ...], topic: str) -> bool:
    """Whether any of a token's patterns covers `topic`."""
    return any(pattern_matches(pattern, topic) for pattern in patterns)
