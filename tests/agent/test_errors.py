"""The error tree: stable reason codes, families, and protocol errors translated once."""

from __future__ import annotations

import re

import pytest

import agent.errors as errors
import protocol
from agent.errors import AgentError, RefusalError, TransportError, translate_protocol_error


def _all_subclasses(cls: type[AgentError]) -> list[type[AgentError]]:
    found: list[type[AgentError]] = []
    for sub in cls.__subclasses__():
        found += [sub, *_all_subclasses(sub)]
    return found


ERRORS: list[type[AgentError]] = [AgentError, *_all_subclasses(AgentError)]


def test_every_error_has_its_own_snake_case_reason() -> None:
    reasons = [cls.__dict__.get("reason") for cls in ERRORS]
    assert all(isinstance(r, str) and re.fullmatch(r"[a-z][a-z0-9_]{0,63}", r) for r in reasons)
    assert len(set(reasons)) == len(reasons)


def test_every_error_is_exported_and_drawn_in_the_tree() -> None:
    doc = errors.__doc__ or ""
    for cls in ERRORS:
        assert cls.__name__ in errors.__all__
        assert re.search(rf"{cls.__name__}\s+{cls.reason}\b", doc), cls.__name__


def test_only_transport_errors_are_retryable() -> None:
    for cls in ERRORS:
        assert cls.retryable == issubclass(cls, TransportError), cls.__name__


@pytest.mark.parametrize(
    "name",
    [
        "BadSignatureError", "WrongDeviceError", "ReplayedDeploymentError",
        "ExpiredDeploymentError", "DowngradeError", "HashMismatchError",
        "LengthMismatchError", "DownloadTooLargeError", "DownloadDeadlineError",
        "UnsafeFileNameError", "ModelLoadError", "GoldenMismatchError", "LatencyBudgetError",
    ],
)  # fmt: skip
def test_every_refusal_of_the_security_model_is_a_refusal(name: str) -> None:
    # ARCHITECTURE.md §3: refused with a specific error and no change of state.
    assert issubclass(getattr(errors, name), RefusalError)


def test_http_status_error_keeps_the_status() -> None:
    assert errors.HttpStatusError("busy", status=503).status == 503


TRANSLATIONS: list[tuple[protocol.ProtocolError, type[RefusalError]]] = [
    (protocol.PayloadTypeError("x"), errors.WrongPayloadTypeError),
    (protocol.MalformedDocumentError("x"), errors.MalformedDocumentError),
    (protocol.BadSignatureError("x"), errors.BadSignatureError),
    (protocol.KeyNotInRoleError("x"), errors.BadSignatureError),
    (protocol.ThresholdNotMetError("x"), errors.BadSignatureError),
    (protocol.RotationVersionError("x"), errors.TrustRootRotationError),
    (protocol.KeyFormatError("x"), errors.MalformedDocumentError),
    (protocol.TopicError("x"), RefusalError),
]


@pytest.mark.parametrize(("exc", "expected"), TRANSLATIONS, ids=lambda v: type(v).__name__)
def test_protocol_errors_translate_to_one_refusal(
    exc: protocol.ProtocolError, expected: type[RefusalError]
) -> None:
    translated = translate_protocol_error(exc, what="deployment 7")
    assert type(translated) is expected
    assert str(translated).startswith("deployment 7: ")
