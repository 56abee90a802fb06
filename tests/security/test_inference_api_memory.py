"""Bodies in flight on the local inference API take a bounded amount of memory, together.

Found in the security review: 8 concurrent 16 MiB requests took the agent from 98 MB to
1.1 GB. Each body was under the 16 MiB limit, but every connection read its body at once
(up to 64 of them), and a JSON body becomes Python objects worth 4 to 24 times its
bytes. Now JSON bodies are capped at 4 MiB, and a process-wide budget reserves each
body's cost (its bytes, JSON at 24x) before it is read: a request that does not fit waits
its turn, or gets 503 with Retry-After.

Memory is the peak resident size of a real ``serve-local`` process (``VmHWM``) minus its
resident size before the attack; the bound is the budget plus room for the interpreter's
own churn. No timing is asserted.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import load_config
from agent.daemon import AgentDaemon
from agent.serving.http_api import BODY_BUDGET_BYTES, MAX_BODY_BYTES, BodyBudget
from simulator.demo_models import build_digits_model
from tests.factories import Keyring
from tests.security.inference_api import MODEL_NAME, LocalApi, serve_local

MIB = 1024 * 1024
MAX_PEAK_GROWTH_BYTES = BODY_BUDGET_BYTES + 64 * MIB
SOCKET_TIMEOUT_S = 120.0  # only so that a hung server fails the test instead of hanging it


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, _ = build_digits_model(tmp_path_factory.mktemp("digits"))
    return path


@pytest.fixture
def api(model: Path) -> Iterator[LocalApi]:
    with serve_local(model) as running:
        yield running


def json_body(size_bytes: int, item: bytes, inner_shape: list[int]) -> bytes:
    """A JSON infer request of about ``size_bytes``, its data ``item`` repeated."""
    count = (size_bytes - 120) // (len(item) + 1)
    shape = json.dumps([count, *inner_shape]).encode()
    return (
        b'{"inputs":[{"name":"input","datatype":"FP32","shape":%s,"data":[' % shape
        + b",".join([item] * count)
        + b"]}]}"
    )


def binary_body(size_bytes: int) -> tuple[bytes, int]:
    """A binary infer request just under ``size_bytes``, and its JSON header's length."""
    count = (size_bytes - 256) // 4
    tensor = {"name": "input", "datatype": "FP32", "shape": [count]}
    tensor["parameters"] = {"binary_data_size": count * 4}
    header = json.dumps({"inputs": [tensor]}).encode()
    return header + bytes(count * 4), len(header)


def send_concurrently(
    api: LocalApi, body: bytes, count: int, json_length: int | None = None
) -> list[str]:
    """Post ``body`` on ``count`` connections at once; each answer's status, or "reset"
    when the server closed the connection while the body was still being sent."""
    head = b"POST /v2/models/%s/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n" % MODEL_NAME.encode()
    head += b"Content-Length: %d\r\n" % len(body)
    if json_length is not None:
        head += b"Inference-Header-Content-Length: %d\r\n" % json_length
    statuses: list[str] = []

    def post() -> None:
        with socket.create_connection(("127.0.0.1", api.port), SOCKET_TIMEOUT_S) as sock:
            try:
                sock.sendall(head + b"\r\n" + body)
                answer = sock.recv(4096)
            except ConnectionError:
                statuses.append("reset")
                return
            statuses.append(answer.split(b" ", 2)[1].decode() if answer else "reset")

    threads = [threading.Thread(target=post) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def test_eight_concurrent_16_mib_bodies_stay_within_the_budget(api: LocalApi) -> None:
    # The finding's request: 16 MiB of JSON numbers, eight at once.
    before = api.status_bytes("VmRSS")
    statuses = send_concurrently(api, json_body(MAX_BODY_BYTES - MIB, b"0.5", []), 8)
    assert api.status_bytes("VmHWM") - before < MAX_PEAK_GROWTH_BYTES
    assert set(statuses) <= {"413", "reset"}, statuses  # over the JSON cap: never read


def test_thirty_two_concurrent_16_mib_binary_bodies_stay_within_the_budget(
    api: LocalApi,
) -> None:
    body, json_length = binary_body(MAX_BODY_BYTES)
    before = api.status_bytes("VmRSS")
    statuses = send_concurrently(api, body, 32, json_length)
    # 400: decoded, then refused for not fitting the model; 503: no room within the wait.
    assert len(statuses) == 32
    assert set(statuses) <= {"400", "503"}, statuses
    assert api.status_bytes("VmHWM") - before < MAX_PEAK_GROWTH_BYTES


def test_json_of_nested_lists_is_charged_for_what_it_expands_to(api: LocalApi) -> None:
    # "[0.5]," parses to a list per value: about 24 times its bytes.
    body = json_body(4 * MIB - 64 * 1024, b"[0.5]", [1])
    before = api.status_bytes("VmRSS")
    statuses = send_concurrently(api, body, 8)
    assert len(statuses) == 8
    assert set(statuses) <= {"400", "503"}, statuses
    assert api.status_bytes("VmHWM") - before < MAX_PEAK_GROWTH_BYTES


def test_the_budget_grants_in_turn_and_refuses_what_finds_no_room() -> None:
    async def scenario() -> list[object]:
        budget = BodyBudget(100)
        first = await budget.reserve(60, wait_s=0)
        refused = await budget.reserve(60, wait_s=0)  # no room, no time to wait
        waiting = asyncio.ensure_future(budget.reserve(60, wait_s=60))
        await asyncio.sleep(0)
        assert first is not None
        budget.release(first)
        granted = await waiting
        oversized = asyncio.ensure_future(budget.reserve(10**9, wait_s=60))
        await asyncio.sleep(0)
        assert granted is not None
        budget.release(granted)
        alone = await oversized  # more than the whole budget: granted alone, as all of it
        return [first, refused, granted, alone, budget.reserved_bytes]

    assert asyncio.run(scenario()) == [60, None, 60, 100, 100]


def test_the_body_limits_are_settings_of_the_agent(tmp_path: Path) -> None:
    trust_root = tmp_path / "trust-root.json"
    trust_root.write_bytes(Keyring().signed_trust_root().to_bytes())
    config = load_config(
        None,
        environ={
            "EDGEFLEET_AGENT_DEVICE_ID": "cam-1",
            "EDGEFLEET_AGENT_DATA_DIR": str(tmp_path / "data"),
            "EDGEFLEET_AGENT_TRUST_ROOT": str(trust_root),
            "EDGEFLEET_AGENT_INFERENCE_MAX_JSON_BODY_BYTES": "1048576",
            "EDGEFLEET_AGENT_INFERENCE_BODY_BUDGET_BYTES": "33554432",
        },
    )

    async def unused(*_args: object) -> object:
        raise AssertionError("not called")

    daemon = AgentDaemon(config, fetcher=unused, check_model=unused)  # type: ignore[arg-type]
    assert daemon.serving.api.max_json_body_bytes == 1024 * 1024
    assert daemon.serving.api.budget.limit_bytes == 32 * 1024 * 1024
