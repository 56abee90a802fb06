"""The update table, recovery after a crash at each state, and the crash-loop cap.

The expected tables are written out here by hand, apart from the module's, so a change
to either shows up as a failing row.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from agent.errors import IllegalTransitionError, JournalError, TransitionCapError
from agent.update.machine import (
    ENTRY_ACTIONS,
    MAX_TRANSITIONS_PER_DEPLOYMENT,
    TERMINAL_STATES,
    TRANSITIONS,
    Journal,
    UpdateEvent,
    UpdateState,
    next_state,
    recover,
)
from agent.update.state_files import advance_journal, load_journal, persist_journal, recover_journal
from protocol import ReleaseRef

S, E = UpdateState, UpdateEvent
RELEASE = ReleaseRef(model="digits", version=3, sha256="ab" * 32)

ALLOWED: dict[tuple[UpdateState, UpdateEvent], UpdateState] = {
    (S.IDLE, E.START): S.FETCHING,
    (S.IDLE, E.CANCEL): S.FAILED,
    (S.IDLE, E.CRASH_RECOVERED): S.IDLE,
    (S.FETCHING, E.FETCHED): S.VERIFYING,
    (S.FETCHING, E.ERROR): S.FAILED,
    (S.FETCHING, E.CANCEL): S.FAILED,
    (S.FETCHING, E.CRASH_RECOVERED): S.FAILED,
    (S.VERIFYING, E.VERIFIED): S.STAGED,
    (S.VERIFYING, E.ERROR): S.FAILED,
    (S.VERIFYING, E.CANCEL): S.FAILED,
    (S.VERIFYING, E.CRASH_RECOVERED): S.FAILED,
    (S.STAGED, E.ACTIVATE): S.ACTIVATING,
    (S.STAGED, E.ERROR): S.FAILED,
    (S.STAGED, E.CANCEL): S.FAILED,
    (S.STAGED, E.CRASH_RECOVERED): S.FAILED,
    (S.ACTIVATING, E.ACTIVATED): S.PROBATION,
    (S.ACTIVATING, E.ERROR): S.ROLLING_BACK,
    (S.ACTIVATING, E.CRASH_RECOVERED): S.ROLLING_BACK,
    (S.PROBATION, E.PROBATION_PASSED): S.COMMITTED,
    (S.PROBATION, E.PROBATION_FAILED): S.ROLLING_BACK,
    (S.PROBATION, E.ERROR): S.ROLLING_BACK,
    (S.PROBATION, E.CRASH_RECOVERED): S.ROLLING_BACK,
    (S.ROLLING_BACK, E.ROLLBACK_DONE): S.ROLLED_BACK,
    (S.ROLLING_BACK, E.ERROR): S.ROLLING_BACK,
    (S.ROLLING_BACK, E.CRASH_RECOVERED): S.ROLLING_BACK,
}

PAIRS = list(itertools.product(UpdateState, UpdateEvent))


@pytest.mark.parametrize(("state", "event"), PAIRS, ids=[f"{s}-{e}" for s, e in PAIRS])
def test_every_state_event_pair_is_allowed_or_refused(
    state: UpdateState, event: UpdateEvent
) -> None:
    if (state, event) in ALLOWED:
        assert next_state(state, event) == ALLOWED[(state, event)]
    else:
        with pytest.raises(IllegalTransitionError):
            next_state(state, event)


def test_the_module_table_is_exactly_the_expected_one() -> None:
    assert TRANSITIONS == ALLOWED


def test_terminal_states_have_no_way_out_and_every_other_state_survives_a_crash() -> None:
    for state in UpdateState:
        has_exit = any(source == state for source, _ in TRANSITIONS)
        assert has_exit == (state not in TERMINAL_STATES)
        assert ((state, E.CRASH_RECOVERED) in TRANSITIONS) == (state not in TERMINAL_STATES)


def test_every_state_is_reachable_from_idle_and_has_an_action() -> None:
    reached, frontier = {S.IDLE}, [S.IDLE]
    while frontier:
        source = frontier.pop()
        for (state, _), target in TRANSITIONS.items():
            if state == source and target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(UpdateState)
    assert set(ENTRY_ACTIONS) == set(UpdateState)


RECOVERY: dict[str, str] = {
    "idle": "idle",
    "fetching": "failed",
    "verifying": "failed",
    "staged": "failed",
    "activating": "rolling_back",
    "probation": "rolling_back",
    "rolling_back": "rolling_back",
    "committed": "committed",
    "failed": "failed",
    "rolled_back": "rolled_back",
    "installing_v2_state": "rolling_back",  # written by a newer agent, or damaged
}


@pytest.mark.parametrize(("crashed_in", "recovered_to"), RECOVERY.items())
def test_recovery_after_a_crash(tmp_path: Path, crashed_in: str, recovered_to: str) -> None:
    path = tmp_path / "journal.json"
    persist_journal(path, Journal(7, crashed_in, RELEASE, transitions=4))
    recovered = recover_journal(path)
    assert recovered is not None
    assert recovered.state == recovered_to
    assert load_journal(path) == recovered
    counted = crashed_in not in {"committed", "failed", "rolled_back"}
    assert recovered.transitions == 4 + counted


def _drive(path: Path, events: list[UpdateEvent]) -> Journal:
    journal = Journal.begin(7, RELEASE)
    persist_journal(path, journal)
    for event in events:
        journal = advance_journal(path, journal, event)
    return journal


HAPPY_PATH = [E.START, E.FETCHED, E.VERIFIED, E.ACTIVATE, E.ACTIVATED, E.PROBATION_PASSED]
FAILED_PROBATION = [*HAPPY_PATH[:5], E.PROBATION_FAILED]
# Mender-style: kill the agent right after it journaled a state; on the next boot it
# recovers and the daemon finishes a rollback. The chain is every state journaled then.
KILL_CASES: dict[str, tuple[list[UpdateEvent], list[UpdateState]]] = {
    "fetching": (HAPPY_PATH[:1], [S.FAILED]),
    "verifying": (HAPPY_PATH[:2], [S.FAILED]),
    "staged": (HAPPY_PATH[:3], [S.FAILED]),
    "activating": (HAPPY_PATH[:4], [S.ROLLING_BACK, S.ROLLED_BACK]),
    "probation": (HAPPY_PATH[:5], [S.ROLLING_BACK, S.ROLLED_BACK]),
    "rolling_back": (FAILED_PROBATION, [S.ROLLING_BACK, S.ROLLED_BACK]),
    "committed": (HAPPY_PATH, []),
}


@pytest.mark.parametrize(("killed_in", "case"), KILL_CASES.items())
def test_kill_at_each_state_ends_in_the_expected_chain(
    tmp_path: Path, killed_in: str, case: tuple[list[UpdateEvent], list[UpdateState]]
) -> None:
    events, expected_chain = case
    path = tmp_path / "journal.json"
    killed = _drive(path, events)
    assert killed.state == killed_in
    journal = recover_journal(path)
    assert journal is not None
    chain = [] if journal == killed else [journal.state]
    while journal.state == S.ROLLING_BACK:
        journal = advance_journal(path, journal, E.ROLLBACK_DONE)
        chain.append(journal.state)
    assert chain == expected_chain
    assert load_journal(path) == journal


def test_happy_path_commits(tmp_path: Path) -> None:
    journal = _drive(tmp_path / "journal.json", HAPPY_PATH)
    assert (journal.state, journal.transitions) == (S.COMMITTED, len(HAPPY_PATH))


def test_crash_loop_during_activation_is_broken_by_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "journal.json"
    _drive(path, HAPPY_PATH[:4])  # journaled "activating"; every boot now crashes
    boots = _boots_until_capped(path)
    persisted = load_journal(path)
    assert persisted is not None
    assert (persisted.state, persisted.last_error) == (S.ROLLED_BACK, "transition_cap")
    assert boots == MAX_TRANSITIONS_PER_DEPLOYMENT - 4 + 1
    assert recover_journal(path) == persisted  # terminal: later boots change nothing


def _boots_until_capped(path: Path) -> int:
    for boot in itertools.count(1):
        try:
            recover_journal(path)
        except TransitionCapError:
            return boot
    raise AssertionError("unreachable")


def test_cap_before_activation_forces_failed(tmp_path: Path) -> None:
    path = tmp_path / "journal.json"
    journal = Journal(7, S.FETCHING, RELEASE, transitions=MAX_TRANSITIONS_PER_DEPLOYMENT)
    persist_journal(path, journal)
    with pytest.raises(TransitionCapError):
        advance_journal(path, journal, E.FETCHED)
    assert load_journal(path) == Journal(
        7, S.FAILED, RELEASE, MAX_TRANSITIONS_PER_DEPLOYMENT, "transition_cap"
    )


def test_failing_rollback_is_retried_until_the_cap() -> None:
    journal = Journal(7, S.ROLLING_BACK, RELEASE)
    for _ in range(MAX_TRANSITIONS_PER_DEPLOYMENT):
        journal = journal.step(E.ERROR, reason="store_error")
    with pytest.raises(TransitionCapError):
        journal.step(E.ERROR)
    assert journal.give_up().state == S.ROLLED_BACK


def test_error_reason_is_journaled(tmp_path: Path) -> None:
    path = tmp_path / "journal.json"
    journal = _drive(path, HAPPY_PATH[:2])
    journal = advance_journal(path, journal, E.ERROR, reason="hash_mismatch")
    assert load_journal(path) == journal
    assert (journal.state, journal.last_error) == (S.FAILED, "hash_mismatch")


def test_unknown_state_cannot_step_without_recovery() -> None:
    with pytest.raises(IllegalTransitionError):
        Journal(7, "installing_v2_state", RELEASE).step(E.START)


def test_recovery_of_an_unknown_state_records_why() -> None:
    recovered = recover(Journal(7, "installing_v2_state", RELEASE))
    assert (recovered.state, recovered.last_error) == (S.ROLLING_BACK, "unknown_journal_state")


def test_give_up_leaves_terminal_journals_alone() -> None:
    committed = Journal(7, S.COMMITTED, RELEASE, transitions=99)
    assert committed.give_up() == committed


def test_missing_journal_means_no_update_in_flight(tmp_path: Path) -> None:
    assert load_journal(tmp_path / "journal.json") is None
    assert recover_journal(tmp_path / "journal.json") is None


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"[]",
        json.dumps({"format": 2}).encode(),
        json.dumps({"format": 1, "deployment_sequence": 7, "transitions": 0}).encode(),
        json.dumps(
            {"format": 1, "deployment_sequence": -1, "transitions": 0, "state": "idle"}
        ).encode(),
        json.dumps(
            {
                "format": 1,
                "deployment_sequence": 7,
                "transitions": 0,
                "state": "idle",
                "release": {"model": "../x", "version": 1, "sha256": "00"},
            }
        ).encode(),
    ],
    ids=["empty", "torn", "array", "format", "no-state", "negative", "bad-release"],
)
def test_corrupt_journal_is_an_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "journal.json"
    path.write_bytes(content)
    with pytest.raises(JournalError):
        load_journal(path)
