"""Canonical JSON (RFC 8785): the RFC's own vectors and properties checked with hypothesis."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import MAX_SAFE_INTEGER, MalformedDocumentError, canonical_json, parse_json

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5)
    ),
    max_leaves=30,
)


def test_rfc8785_example() -> None:
    value = json.loads(
        r"""{
          "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
          "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
          "literals": [null, true, false]
        }"""
    )
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonical_json(value) == expected.encode("utf-8")


def test_rfc8785_keys_sort_by_utf16_code_units() -> None:
    value = {"\u20ac": 1, "\r": 2, "\ufb33": 3, "1": 4, "\U0001f600": 5, "\u0080": 6, "\u00f6": 7}
    keys = list(json.loads(canonical_json(value)))
    assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (0.0, "0"),
        (-0.0, "0"),
        (1.0, "1"),
        (-1.5, "-1.5"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (123456789012.5, "123456789012.5"),
    ],
)
def test_numbers_follow_ecmascript_formatting(number: float, text: str) -> None:
    assert canonical_json(number) == text.encode()


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        -math.inf,
        MAX_SAFE_INTEGER + 1,
        {1: "non-string key"},
        b"bytes",
        {"lone surrogate": "\ud800"},
        object(),
    ],
    # A stable id for object(): its repr holds an address, which differs per process.
    ids=lambda value: "object()" if type(value) is object else repr(value),
)
def test_values_json_cannot_carry_exactly_are_refused(value: Any) -> None:
    with pytest.raises(MalformedDocumentError):
        canonical_json(value)


@given(json_values)
def test_canonical_form_is_a_fixed_point(value: Any) -> None:
    once = canonical_json(value)
    assert canonical_json(parse_json(once)) == once


@given(json_values)
def test_canonical_form_parses_back_to_an_equal_value(value: Any) -> None:
    assert parse_json(canonical_json(value)) == value


@given(st.dictionaries(st.text(), json_values, max_size=8))
def test_key_order_does_not_change_the_bytes(value: dict[str, Any]) -> None:
    reordered = dict(reversed(list(value.items())))
    assert canonical_json(reordered) == canonical_json(value)


def test_large_integral_double_reads_back_as_the_same_double() -> None:
    number = 4.533367679272093e16
    assert canonical_json(number) == b"45333676792720930"
    assert parse_json(canonical_json(number)) == number


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_floats_round_trip_exactly(number: float) -> None:
    assert float(canonical_json(number)) == number


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(
                st.text(alphabet=st.characters(max_codepoint=127)), children, max_size=4
            )
        ),
        max_leaves=20,
    )
)
def test_no_insignificant_whitespace(value: Any) -> None:
    compact = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_json(value) == compact.encode("utf-8")
