"""Clients that send a body slowly, or never, hold no handler slot and are cut off.

Found in the security review: the 10-handler limit took its slot before the body was
read and nothing timed out a slow body, so ten sockets sending ``Content-Length: 100``
and no body made ``/healthz``, artifacts and ``/ui`` time out for as long as they stayed
open. Bodies are now received whole, within a deadline, before a slot is taken.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from controller.api.concurrency import HANDLER_CONCURRENCY
from controller.tokens import Role
from tests.security.http_server import (
    ServedController,
    closed_by_server,
    controller_settings,
    get,
    metric,
    read_answer,
    request_head,
    served,
)

BODY_TIMEOUT_S = 1.0
MIN_BODY_BYTES_PER_S = 1000


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[ServedController]:
    settings = controller_settings(
        tmp_path,
        request_body_timeout_s=BODY_TIMEOUT_S,
        min_request_body_bytes_per_s=MIN_BODY_BYTES_PER_S,
    )
    with served(settings) as running:
        yield running


def _stall(controller: ServedController, stack: ExitStack, path: str, **headers: str) -> None:
    sock = stack.enter_context(controller.connect())
    sock.sendall(request_head("POST", path, {"Content-Length": "100", **headers}))


def test_ten_stalled_bodies_without_a_token_do_not_hang_healthz(
    controller: ServedController,
) -> None:
    with ExitStack() as stack:
        for _ in range(HANDLER_CONCURRENCY + 2):
            _stall(controller, stack, "/api/v1/rollouts", **{"Content-Type": "application/json"})
        time.sleep(0.1)  # let the server take the stalled requests in
        started = time.monotonic()
        assert get(controller, "/healthz") == 200
        assert get(controller, "/ui/login") == 200
        # Answered while every stalled request still waits, not after their timeout.
        assert time.monotonic() - started < BODY_TIMEOUT_S / 2


def test_ten_stalled_uploads_with_a_token_do_not_hang_healthz(
    controller: ServedController,
) -> None:
    """An operator's upload that stalls mid-body holds no slot either."""
    token = controller.token(Role.OPERATOR)
    with ExitStack() as stack:
        for _ in range(HANDLER_CONCURRENCY + 2):
            _stall(
                controller,
                stack,
                "/api/v1/models/stalled/versions",
                Authorization=f"Bearer {token}",
                **{"Content-Type": "multipart/form-data; boundary=x"},
            )
        time.sleep(0.1)
        started = time.monotonic()
        assert get(controller, "/healthz") == 200
        assert time.monotonic() - started < BODY_TIMEOUT_S / 2


def test_stalled_body_is_answered_408_and_its_connection_closed(
    controller: ServedController,
) -> None:
    with controller.connect() as sock:
        sock.sendall(
            request_head("POST", "/api/v1/enroll", {"Content-Length": "100"}) + b'{"token": '
        )
        started = time.monotonic()
        status, headers, body = read_answer(sock)
        waited_s = time.monotonic() - started
        assert status == 408
        assert json.loads(body)["kind"] == "RequestTimeoutError"
        assert headers["connection"] == "close"
        assert BODY_TIMEOUT_S * 0.8 < waited_s < BODY_TIMEOUT_S + 1.0
        assert closed_by_server(sock)


def test_body_trickled_below_the_minimum_rate_is_cut_off(controller: ServedController) -> None:
    """A byte at a time keeps no connection forever: the body must keep a minimum rate."""
    length = 100 * MIN_BODY_BYTES_PER_S
    with controller.connect() as sock:
        sock.sendall(request_head("POST", "/api/v1/enroll", {"Content-Length": str(length)}))
        started = time.monotonic()
        answered = None
        while answered is None and time.monotonic() - started < BODY_TIMEOUT_S + 2.0:
            with contextlib.suppress(OSError):
                sock.sendall(b" " * 10)  # 100 bytes/s, a tenth of the minimum
            sock.settimeout(0.1)
            try:
                answered = read_answer(sock)
            except TimeoutError:
                continue
        assert answered is not None, "the trickled body was never cut off"
        assert answered[0] == 408
        assert time.monotonic() - started < BODY_TIMEOUT_S + 1.0


def test_stalled_bodies_are_counted_in_metrics(controller: ServedController) -> None:
    too_slow = 'edgefleet_http_requests_refused_total{reason="too_slow"}'
    assert metric(controller, too_slow) == 0
    with controller.connect() as sock:
        sock.sendall(request_head("POST", "/api/v1/enroll", {"Content-Length": "100"}))
        assert read_answer(sock)[0] == 408
    assert metric(controller, too_slow) == 1
