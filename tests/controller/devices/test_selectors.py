"""Label selectors as tables: what parses to which canonical form, what matches, what fails."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.devices.selectors import Selector, parse_labels, parse_selector, verify_labels
from controller.errors import BadRequestError, SelectorError

BERLIN_GPU = {"site": "berlin", "tier": "prod", "gpu": "a100", "region": "eu"}
LAB = {"site": "berlin", "tier": "lab", "gpu": "a100", "region": "eu"}
BETA = {"site": "berlin", "gpu": "t4", "region": "us", "beta": "yes"}
BARE: dict[str, str] = {}


@pytest.mark.parametrize(
    ("text", "canonical", "matching", "not_matching"),
    [
        ("", "", [BERLIN_GPU, BARE], []),
        ("   ", "", [BARE], []),
        ("site=berlin", "site=berlin", [BERLIN_GPU, LAB], [BARE]),
        ("site==berlin", "site=berlin", [BERLIN_GPU], [BARE]),
        ("tier!=lab", "tier!=lab", [BERLIN_GPU, BARE, BETA], [LAB]),
        ("gpu", "gpu", [BERLIN_GPU, BETA], [BARE]),
        ("!beta", "!beta", [BERLIN_GPU, BARE], [BETA]),
        ("region in (us, eu)", "region in (eu,us)", [BERLIN_GPU, BETA], [BARE]),
        ("region in (eu,eu)", "region in (eu)", [LAB], [BETA]),
        ("region notin (us)", "region notin (us)", [BERLIN_GPU, BARE], [BETA]),
        (
            "site=berlin,tier!=lab,gpu,!beta,region in (eu,us)",
            "!beta,gpu,region in (eu,us),site=berlin,tier!=lab",
            [BERLIN_GPU],
            [LAB, BETA, BARE],
        ),
        (" site = berlin , gpu ", "gpu,site=berlin", [BERLIN_GPU], [BARE]),
        ("gpu,gpu,site=berlin", "gpu,site=berlin", [BERLIN_GPU], [BARE]),
        ("site=berlin,site=paris", "site=berlin,site=paris", [], [BERLIN_GPU, BARE]),
        ("in", "in", [{"in": "x"}], [BARE]),
        ("k8s.io/zone=a-1_b.c", "k8s.io/zone=a-1_b.c", [{"k8s.io/zone": "a-1_b.c"}], [BARE]),
    ],
    ids=[
        "empty_matches_all",
        "blank_matches_all",
        "equals",
        "double_equals",
        "not_equals_also_matches_missing_key",
        "exists",
        "not_exists",
        "in_set_sorted",
        "in_set_deduplicated",
        "notin_also_matches_missing_key",
        "every_kind_sorted_by_key",
        "spaces_around_tokens",
        "duplicates_dropped",
        "contradiction_matches_nothing",
        "keyword_as_key",
        "prefixed_key",
    ],
)
def test_selector_parses_to_canonical_form_and_matches(
    text: str,
    canonical: str,
    matching: list[dict[str, str]],
    not_matching: list[dict[str, str]],
) -> None:
    selector = parse_selector(text)

    assert str(selector) == canonical
    assert parse_selector(str(selector)) == selector
    assert [selector.matches(labels) for labels in matching] == [True] * len(matching)
    assert [selector.matches(labels) for labels in not_matching] == [False] * len(not_matching)


@pytest.mark.parametrize(
    ("text", "position", "message"),
    [
        ("site=", 5, "expected a value, found the end"),
        ("=berlin", 0, "expected a key, found '='"),
        ("site=berlin,", 12, "expected a key, found the end"),
        (",site", 0, "expected a key, found ','"),
        ("site berlin", 5, "expected ',' between requirements"),
        ("a=b=c", 3, "expected ',' between requirements"),
        ("region in eu", 10, "expected '(' after 'in'"),
        ("region in ()", 11, "expected a value, found ')'"),
        ("region in (eu,", 14, "expected a value, found the end"),
        ("region in (eu us)", 14, "expected ',' or ')' in a value set"),
        ("site=ber$lin", 8, "unexpected character '$'"),
        ("site=bérlin", 6, "unexpected character 'é'"),
        ("-site=berlin", 0, "invalid label key '-site'"),
        ("site=.berlin", 5, "invalid label value '.berlin'"),
        ("k" * 64, 0, "invalid label key"),
        ("!", 1, "expected a key, found the end"),
        ("!=x", 0, "expected a key, found '!='"),
        ("site!berlin", 4, "expected ',' between requirements"),
    ],
    ids=[
        "missing_value",
        "missing_key",
        "trailing_comma",
        "leading_comma",
        "missing_operator",
        "chained_equals",
        "set_without_parenthesis",
        "empty_set",
        "unclosed_set",
        "set_without_comma",
        "bad_character",
        "non_ascii",
        "key_starts_with_dash",
        "value_starts_with_dot",
        "key_too_long",
        "bang_alone",
        "not_equals_without_key",
        "bang_inside",
    ],
)
def test_bad_selector_is_refused_with_its_position(text: str, position: int, message: str) -> None:
    with pytest.raises(SelectorError) as caught:
        parse_selector(text)

    assert caught.value.position == position
    assert message in str(caught.value)
    assert f"at position {position} in {text!r}" in str(caught.value)


def test_selector_error_is_a_bad_request_and_a_value_error() -> None:
    with pytest.raises(BadRequestError):
        parse_selector("=")
    with pytest.raises(ValueError, match="position 0"):
        parse_selector("=")


def test_empty_selector_is_the_default_selector() -> None:
    assert parse_selector("") == Selector()
    assert Selector().matches({"anything": "at-all"})


@pytest.mark.parametrize(
    ("text", "labels"),
    [
        ("", {}),
        ("site=berlin", {"site": "berlin"}),
        ("site=berlin, tier = lab", {"site": "berlin", "tier": "lab"}),
        ("k8s.io/zone=a_1", {"k8s.io/zone": "a_1"}),
    ],
    ids=["none", "one", "two_with_spaces", "prefixed_key"],
)
def test_labels_parse(text: str, labels: dict[str, str]) -> None:
    assert parse_labels(text) == labels


@pytest.mark.parametrize(
    ("text", "position", "message"),
    [
        ("site", 0, "expected key=value"),
        ("site=berlin,", 12, "expected key=value"),
        ("site=berlin,site=paris", 12, "label 'site' given twice"),
        ("site=", 0, "invalid label value ''"),
        ("a=b, =c", 5, "invalid label key ''"),
        ("a=b c", 0, "invalid label value 'b c'"),
    ],
    ids=["no_equals", "trailing_comma", "duplicate_key", "empty_value", "empty_key", "space"],
)
def test_bad_labels_are_refused(text: str, position: int, message: str) -> None:
    with pytest.raises(SelectorError) as caught:
        parse_labels(text)

    assert caught.value.position == position
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "labels",
    [{"": "x"}, {"x": ""}, {"x y": "z"}, {"x": "y" * 64}, {"_x": "y"}],
    ids=["empty_key", "empty_value", "space_in_key", "value_too_long", "underscore_first"],
)
def test_verify_labels_refuses_bad_labels(labels: dict[str, str]) -> None:
    with pytest.raises(SelectorError):
        verify_labels(labels)


_LABEL = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._/-]{0,10}\Z")
_REQUIREMENT = st.one_of(
    _LABEL,
    _LABEL.map(lambda key: f"!{key}"),
    st.tuples(_LABEL, st.sampled_from(["=", "==", "!="]), _LABEL).map("".join),
    st.tuples(_LABEL, st.sampled_from(["in", "notin"]), st.lists(_LABEL, min_size=1)).map(
        lambda t: f"{t[0]} {t[1]} ({','.join(t[2])})"
    ),
)


@settings(derandomize=True, max_examples=200)
@given(st.lists(_REQUIREMENT, max_size=6), st.dictionaries(_LABEL, _LABEL, max_size=6))
def test_canonical_form_parses_back_to_an_equal_selector_that_matches_alike(
    requirements: list[str], labels: dict[str, str]
) -> None:
    selector = parse_selector(",".join(requirements))
    again = parse_selector(str(selector))

    assert again == selector
    assert str(again) == str(selector)
    assert again.matches(labels) == selector.matches(labels)
