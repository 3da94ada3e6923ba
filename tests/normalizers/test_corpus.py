"""Every fixture of every provider gives exactly the events its file states."""

from __future__ import annotations

import pytest

from normalizers.base import ParseError
from normalizers.registry import DEFAULT_REGISTRY
from tests.corpus import Case, comparable, load_cases

CASES = load_cases()


def test_every_provider_has_fixtures() -> None:
    assert {case.provider for case in CASES} == set(DEFAULT_REGISTRY)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_fixture_gives_its_expected_events(case: Case) -> None:
    provider = DEFAULT_REGISTRY[case.provider]
    request = case.callback_request()

    if "error" in case.data:
        with pytest.raises(ParseError, match=case.data["error"]):
            provider.parse_callback(request, case.received_at)
        return
    events = provider.parse_callback(request, case.received_at)

    assert [comparable(event) for event in events] == case.data["expected"]
    assert case.data["expected"], "a case states at least one event, or an error"
