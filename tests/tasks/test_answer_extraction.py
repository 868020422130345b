"""Reading the answer object out of hostile model output: bounded work, no crash, bounded storage."""

from __future__ import annotations

from models.answers import MAX_RAW_TEXT, bounded_raw_text, extract_json_object


def test_thousands_of_open_braces_before_the_answer_still_find_it() -> None:
    assert extract_json_object("{" * 8000 + ' then {"expression": "happiness"}') == {"expression": "happiness"}


def test_nesting_deeper_than_the_decoder_is_no_object_not_a_crash() -> None:
    deep = '{"a":' * 5000 + "1" + "}" * 5000
    assert extract_json_object(deep) is None
    assert extract_json_object(deep + ' {"ok": true}') in (None, {"ok": True})


def test_first_object_that_parses_wins_and_strings_may_hold_braces() -> None:
    assert extract_json_object('x {"a": [1, {"b": "}"}]} y {"c": 2}') == {"a": [1, {"b": "}"}]}
    assert extract_json_object('[1, 2] {not json} {"x": 1') is None


def test_long_output_is_stored_truncated_with_a_marker() -> None:
    assert bounded_raw_text("short") == "short"
    stored = bounded_raw_text("z" * (MAX_RAW_TEXT + 500))
    assert stored.startswith("z" * MAX_RAW_TEXT) and stored.endswith("500 more characters not stored]")


def test_benchmark_parser_survives_hostile_answers() -> None:
    from tasks.benchmark.parse import parse_answer

    for hostile in ('{"a":' * 10000, "{" * 60000, '{"a": 1, ' * 6000, '{"a": [' + "1," * 30000):
        assert parse_answer(hostile).method == "none"  # no RecursionError, no answer invented
    cut = parse_answer('noise {"a":' * 50 + ' {"expression": "happiness", "aus": {"AU6": true, "AU12": tr')
    assert cut.labels.expression == "happiness"
