"""The update lifecycle of one deployment: one table, a journal, crash recovery, a cap.

Modelled on Mender's update daemon. Everything the machine may do is in ``TRANSITIONS``,
one ``(state, event) -> next state`` table; anything else is an ``IllegalTransitionError``.

    idle -> fetching -> verifying -> staged -> activating -> probation -> committed
    failures before activation -> failed            (the current model was never touched)
    failures in activating or probation -> rolling_back -> rolled_back

The caller drives it like this, and the order is the point::

    journal = journal.step(event)        # pure: the next state, or an error
    persist_journal(path, journal)       # fsync'd BEFORE the state's work starts
    run the work of journal.state        # ENTRY_ACTIONS says what that is

so after a crash the journal names the step that may have been interrupted, and
``recover`` maps it (the ``crash_recovered`` rows of the table):

    idle                       -> idle           nothing was done yet
    fetching|verifying|staged  -> failed         current model untouched; clean staging
    activating|probation       -> rolling_back   the switch may have happened: undo it
    rolling_back               -> rolling_back   finish the rollback
    committed|failed|rolled_back                 stay (terminal; no transition counted)
    a state this code does not know -> rolling_back

Invariants:
- every state change goes through the table (recovery included), and each one counts
  towards ``MAX_TRANSITIONS_PER_DEPLOYMENT``; past the cap the journal is forced to a
  terminal state (``give_up``) and ``TransitionCapError`` is raised, so a deployment
  that crashes the device on every boot stops being retried;
- terminal states have no outgoing rows; a new deployment starts a new journal.

Pure: ``state_files`` reads and writes the one journal file (``load_journal``,
``persist_journal``, ``advance_journal``, ``recover_journal``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any, TypeGuard

from protocol import ReleaseRef

from ..errors import IllegalTransitionError, JournalError, TransitionCapError

__all__ = [
    "ENTRY_ACTIONS",
    "JOURNAL_FORMAT",
    "MAX_TRANSITIONS_PER_DEPLOYMENT",
    "PRE_ACTIVATION_STATES",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "Action",
    "Journal",
    "UpdateEvent",
    "UpdateState",
    "next_state",
    "recover",
]

MAX_TRANSITIONS_PER_DEPLOYMENT = 32
JOURNAL_FORMAT = 1


class UpdateState(StrEnum):
    IDLE = "idle"
    FETCHING = "fetching"
    VERIFYING = "verifying"
    STAGED = "staged"
    ACTIVATING = "activating"
    PROBATION = "probation"
    COMMITTED = "committed"
    FAILED = "failed"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"


class UpdateEvent(StrEnum):
    START = "start"
    FETCHED = "fetched"
    VERIFIED = "verified"
    ACTIVATE = "activate"
    ACTIVATED = "activated"
    PROBATION_PASSED = "probation_passed"
    PROBATION_FAILED = "probation_failed"
    ROLLBACK_DONE = "rollback_done"
    ERROR = "error"
    CANCEL = "cancel"  # superseded by a newer deployment; only before activation
    CRASH_RECOVERED = "crash_recovered"


class Action(StrEnum):
    """What the caller does on entering a state."""

    WAIT = "wait"  # nothing to do until the next event
    DOWNLOAD = "download"  # fetch the artifact into staging
    VERIFY_ARTIFACT = "verify_artifact"  # hash, length, sandboxed load and golden check
    SWITCH = "switch"  # ModelStore.activate
    OBSERVE = "observe"  # run probation
    RECORD_COMMIT = "record_commit"  # TrustState.record_commit, report
    CLEAN_STAGING = "clean_staging"  # drop staged files; the current model is untouched
    ROLL_BACK = "roll_back"  # ModelStore.rollback(release sha256)
    REPORT = "report"  # report the rollback


S, E = UpdateState, UpdateEvent
_PRE = (S.FETCHING, S.VERIFYING, S.STAGED)
_TOUCHED = (S.ACTIVATING, S.PROBATION)

# Read-only: the table is the specification, not a registry to extend at run time.
TRANSITIONS: Mapping[tuple[UpdateState, UpdateEvent], UpdateState] = MappingProxyType(
    {
        (S.IDLE, E.START): S.FETCHING,
        (S.IDLE, E.CANCEL): S.FAILED,
        (S.IDLE, E.CRASH_RECOVERED): S.IDLE,
        (S.FETCHING, E.FETCHED): S.VERIFYING,
        (S.VERIFYING, E.VERIFIED): S.STAGED,
        (S.STAGED, E.ACTIVATE): S.ACTIVATING,
        **{(state, E.ERROR): S.FAILED for state in _PRE},
        **{(state, E.CANCEL): S.FAILED for state in _PRE},
        **{(state, E.CRASH_RECOVERED): S.FAILED for state in _PRE},
        (S.ACTIVATING, E.ACTIVATED): S.PROBATION,
        (S.PROBATION, E.PROBATION_PASSED): S.COMMITTED,
        (S.PROBATION, E.PROBATION_FAILED): S.ROLLING_BACK,
        **{(state, E.ERROR): S.ROLLING_BACK for state in _TOUCHED},
        **{(state, E.CRASH_RECOVERED): S.ROLLING_BACK for state in _TOUCHED},
        (S.ROLLING_BACK, E.ROLLBACK_DONE): S.ROLLED_BACK,
        # A rollback that failed is retried; the cap ends a rollback that never succeeds.
        (S.ROLLING_BACK, E.ERROR): S.ROLLING_BACK,
        (S.ROLLING_BACK, E.CRASH_RECOVERED): S.ROLLING_BACK,
    }
)
del S, E

TERMINAL_STATES = frozenset({UpdateState.COMMITTED, UpdateState.FAILED, UpdateState.ROLLED_BACK})
PRE_ACTIVATION_STATES = frozenset({UpdateState.IDLE, *_PRE})

ENTRY_ACTIONS: Mapping[UpdateState, Action] = MappingProxyType(
    {
        UpdateState.IDLE: Action.WAIT,
        UpdateState.FETCHING: Action.DOWNLOAD,
        UpdateState.VERIFYING: Action.VERIFY_ARTIFACT,
        UpdateState.STAGED: Action.WAIT,
        UpdateState.ACTIVATING: Action.SWITCH,
        UpdateState.PROBATION: Action.OBSERVE,
        UpdateState.COMMITTED: Action.RECORD_COMMIT,
        UpdateState.FAILED: Action.CLEAN_STAGING,
        UpdateState.ROLLING_BACK: Action.ROLL_BACK,
        UpdateState.ROLLED_BACK: Action.REPORT,
    }
)


def next_state(state: UpdateState, event: UpdateEvent) -> UpdateState:
    """The table's answer for ``(state, event)``; ``IllegalTransitionError`` if none."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransitionError(f"no transition from {state} on {event}") from None


@dataclass(frozen=True)
class Journal:
    """Where one deployment's update stands, as persisted before each step.

    ``state`` is a plain ``str`` only when a journal on disk names a state this code
    does not know (written by a newer agent, or damaged); ``recover`` rolls it back.
    """

    deployment_sequence: int
    state: UpdateState | str
    release: ReleaseRef | None
    transitions: int = 0
    last_error: str | None = None
    # The event seq reserved for this deployment's one final event, recorded before the
    # event is queued: after a crash the same seq is queued again, and the controller,
    # idempotent on (device, seq), applies it once.
    final_event_seq: int | None = None
    final_reported: bool = False

    @classmethod
    def begin(cls, deployment_sequence: int, release: ReleaseRef | None) -> Journal:
        return cls(deployment_sequence, UpdateState.IDLE, release)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def step(
        self,
        event: UpdateEvent,
        *,
        reason: str | None = None,
        max_transitions: int = MAX_TRANSITIONS_PER_DEPLOYMENT,
    ) -> Journal:
        """The journal after ``event``; ``reason`` records why, for errors and failures.

        Raises ``IllegalTransitionError`` or, when this would be one transition too many,
        ``TransitionCapError`` (then persist ``give_up()``; ``advance_journal`` does).
        """
        if not isinstance(self.state, UpdateState):
            raise IllegalTransitionError(f"unknown state {self.state!r}: recover() first")
        target = next_state(self.state, event)
        return self._moved(target, reason, max_transitions)

    def give_up(self) -> Journal:
        """The terminal journal forced by the cap: ``failed`` if the current model was
        never touched, else ``rolled_back`` (the store keeps ``current`` complete)."""
        if self.terminal:
            return self
        forced = (
            UpdateState.FAILED if self.state in PRE_ACTIVATION_STATES else UpdateState.ROLLED_BACK
        )
        return replace(self, state=forced, last_error=TransitionCapError.reason)

    def _moved(self, target: UpdateState, reason: str | None, max_transitions: int) -> Journal:
        if self.transitions >= max_transitions:
            raise TransitionCapError(
                f"deployment {self.deployment_sequence} reached {self.transitions} transitions "
                f"in state {self.state}; giving up"
            )
        return replace(
            self,
            state=target,
            transitions=self.transitions + 1,
            last_error=reason if reason is not None else self.last_error,
        )

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "format": JOURNAL_FORMAT,
            "deployment_sequence": self.deployment_sequence,
            "state": str(self.state),
            "release": None if self.release is None else self.release.model_dump(mode="json"),
            "transitions": self.transitions,
            "last_error": self.last_error,
            "final_event_seq": self.final_event_seq,
            "final_reported": self.final_reported,
        }

    @classmethod
    def from_json_obj(cls, obj: Any) -> Journal:
        if not isinstance(obj, dict) or obj.get("format") != JOURNAL_FORMAT:
            raise JournalError(f"not a journal of format {JOURNAL_FORMAT}")
        sequence, transitions = obj.get("deployment_sequence"), obj.get("transitions")
        state, last_error = obj.get("state"), obj.get("last_error")
        if not (_is_count(sequence) and _is_count(transitions) and isinstance(state, str)):
            raise JournalError("journal lacks a sequence, a transition count or a state")
        if last_error is not None and not isinstance(last_error, str):
            raise JournalError("journal last_error is not a string")
        release = obj.get("release")
        try:
            ref = None if release is None else ReleaseRef.model_validate(release)
        except ValueError as exc:  # pydantic's ValidationError
            raise JournalError(f"journal release is not a release reference: {exc}") from exc
        final_seq, reported = obj.get("final_event_seq"), obj.get("final_reported", False)
        if final_seq is not None and not _is_count(final_seq):
            raise JournalError("journal final_event_seq is not a count")
        if not isinstance(reported, bool):
            raise JournalError("journal final_reported is not a boolean")
        known = state in UpdateState.__members__.values()
        return cls(
            sequence,
            UpdateState(state) if known else state,
            ref,
            transitions,
            last_error,
            final_seq,
            reported,
        )


def recover(journal: Journal, *, max_transitions: int = MAX_TRANSITIONS_PER_DEPLOYMENT) -> Journal:
    """The journal to persist and resume from after a crash (see the module's table)."""
    if journal.terminal:
        return journal
    if not isinstance(journal.state, UpdateState):
        # Not knowing what was interrupted, assume the switch may have happened.
        return journal._moved(UpdateState.ROLLING_BACK, "unknown_journal_state", max_transitions)
    return journal.step(UpdateEvent.CRASH_RECOVERED, max_transitions=max_transitions)


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
