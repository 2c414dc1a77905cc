"""The gateway's check of a submit's payload against its kind's schema: what it tells."""

import json

from ackwire.gateway.jobs import _payload_problem

SCHEMA = json.dumps(
    {
        "type": "object",
        "properties": {
            "text": {"type": "string"},
            "options": {
                "type": "object",
                "properties": {"speed": {"type": "number", "minimum": 0}},
            },
        },
        "required": ["text"],
    }
)


def test_a_valid_payload_has_no_problem() -> None:
    assert _payload_problem(SCHEMA, {"text": "hi", "options": {"speed": 2}}) is None


def test_a_problem_names_where_and_why() -> None:
    problem = _payload_problem(SCHEMA, {"text": "hi", "options": {"speed": -1}})
    assert problem is not None
    assert problem.startswith("options/speed: ")
    assert "-1" in problem
    assert "minimum" in problem


def test_a_missing_field_is_named() -> None:
    problem = _payload_problem(SCHEMA, {})
    assert problem is not None
    assert "text" in problem
    assert "required" in problem


def test_a_problem_is_at_most_200_characters() -> None:
    problem = _payload_problem(SCHEMA, {"text": "x" * 1000, "options": {"speed": "y" * 1000}})
    assert problem is not None
    assert problem.startswith("options/speed: ")
    assert len(problem) == 200


def test_a_broken_schema_leaves_the_payload_to_the_node() -> None:
    assert _payload_problem(json.dumps({"type": 5}), {"text": "hi"}) is None


def test_a_schema_with_a_remote_ref_is_not_fetched_but_broken() -> None:
    schema = json.dumps({"properties": {"text": {"$ref": "http://127.0.0.1:9/text.json"}}})
    assert _payload_problem(schema, {"text": "hi"}) is None
