"""Two models on one device (ADR 0003): a real agent process, Mosquitto and HTTP.

The device runs ``affine`` (the ``base`` fixture: y = x + 1) and ``shift`` (y = x + 10);
each version adds a different constant, so an inference tells which version serves.
Each model's updates run on their own: one model's probation does not hold the other's
update, a signed removal takes one model away and leaves the other serving, and a SIGKILL
with both models inside an update leaves each serving its old or its new version.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from protocol import ProbationPolicy, Release
from tests.agent.e2e.agent_process import AgentProcess
from tests.agent.e2e.conftest import DEVICE, deploy, sequence_of
from tests.agent.e2e.double import ControllerDouble
from tests.agent.e2e.models import affine_model, release_of
from tests.agent.e2e.test_crash_matrix import CRASHES
from tests.agent.e2e.test_update_path import assert_serving

ROW = [1.0, 2.0, 3.0, 4.0]
SHIFT = "shift"


def added(agent: AgentProcess, model: str) -> float:
    """What the model serving as ``model`` adds to its input."""
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}
    response = httpx.post(f"{agent.api_url}/v2/models/{model}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return float(response.json()["outputs"][0]["data"][0] - ROW[0])


def shift_release(double: ControllerDouble, models_dir: Path, version: int) -> Release:
    model = affine_model(models_dir / f"shift-{version}.onnx", 10.0 * version)
    return release_of(double, model, version=version, name=SHIFT)


@pytest.fixture
def both(double: ControllerDouble, agent: AgentProcess, base: Release, models_dir: Path) -> Release:
    """``shift`` v1 committed beside ``affine`` v1 (``base``)."""
    release = shift_release(double, models_dir, 1)
    final = double.wait_for_final(DEVICE, sequence_of(deploy(double, release)))
    assert final.type == "committed", double.event_summary()
    return release


@pytest.fixture
def steady_traffic(agent: AgentProcess) -> Iterator[dict[str, list[int]]]:
    """Requests to both models until the test ends; the status codes per model."""
    codes: dict[str, list[int]] = {"affine": [], SHIFT: []}
    stop = threading.Event()

    def run() -> None:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                for model, seen in codes.items():
                    try:
                        url = f"{agent.api_url}/v2/models/{model}/infer"
                        seen.append(client.post(url, json=body).status_code)
                    except httpx.HTTPError:
                        seen.append(0)
                time.sleep(0.02)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield codes
    stop.set()
    thread.join(timeout=30)


def test_two_models_serve_side_by_side_and_both_are_reported(
    double: ControllerDouble, agent: AgentProcess, base: Release, both: Release
) -> None:
    assert added(agent, "affine") == 1.0
    assert added(agent, SHIFT) == 10.0
    index = httpx.get(f"{agent.api_url}/v2/models").json()["models"]
    assert [(m["name"], m["versions"], m["ready"]) for m in index] == [
        ("affine", ["1"], True),
        (SHIFT, ["1"], True),
    ]
    assert httpx.get(f"{agent.api_url}/v2/health/ready").status_code == 200
    double.wait_for(
        lambda: double.active(DEVICE, SHIFT) is not None, "a state that lists both models"
    )
    state = double.states[DEVICE]
    assert [(m.model, m.active and m.active.version) for m in state.models] == [
        ("affine", 1),
        (SHIFT, 1),
    ]
    assert all(m.last_good == m.active for m in state.models)
    assert_serving(agent, base)


def test_one_models_probation_does_not_hold_the_other_models_update(
    double: ControllerDouble,
    agent: AgentProcess,
    base: Release,
    both: Release,
    models_dir: Path,
    steady_traffic: dict[str, list[int]],
) -> None:
    # shift v2 stays on probation for 20 s; affine v2 must not wait for it.
    # Latency is not what this test judges: on a busy machine two tiny models' p95 ratio
    # is noise, so its limit is out of reach.
    long_probation = ProbationPolicy(
        window_s=20, min_requests=0, max_extension_s=0, max_p95_latency_ratio=1000.0
    )
    quick_probation = long_probation.model_copy(update={"window_s": 1})
    slow = deploy(double, shift_release(double, models_dir, 2), probation=long_probation)
    agent.wait_for_journal_state("probation", sequence_of(slow), model=SHIFT)
    affine_v2 = release_of(double, affine_model(models_dir / "a2.onnx", 2.0), version=2)
    quick = deploy(double, affine_v2, probation=quick_probation)

    assert double.wait_for_final(DEVICE, sequence_of(quick)).type == "committed"
    journal = agent.journal(SHIFT)
    assert journal is not None
    assert journal["state"] == "probation"  # still: the two did not wait for each other
    assert added(agent, "affine") == 2.0
    assert added(agent, SHIFT) == 20.0  # the candidate serves during its probation
    assert double.wait_for_final(DEVICE, sequence_of(slow), timeout_s=60).type == "committed"
    assert set(steady_traffic["affine"]) == {200}
    assert set(steady_traffic[SHIFT]) == {200}


def test_a_signed_removal_takes_one_model_away_and_keeps_the_other(
    double: ControllerDouble, agent: AgentProcess, base: Release, both: Release
) -> None:
    double.publish_desired(DEVICE, double.removal(DEVICE, SHIFT, now=datetime.now(UTC)))

    double.wait_for_event(DEVICE, "removed")
    double.wait_for(lambda: double.active(DEVICE, SHIFT) is None, "a state without shift")
    assert httpx.get(f"{agent.api_url}/v2/models/{SHIFT}").status_code == 404
    assert [m["name"] for m in httpx.get(f"{agent.api_url}/v2/models").json()["models"]] == [
        "affine"
    ]
    assert httpx.get(f"{agent.api_url}/v2/health/ready").status_code == 200
    assert agent.current_model_dir(SHIFT) is None
    assert not (agent.data_dir / "store" / "models" / f"sha256-{both.artifact.sha256}").exists()
    agent.stop()
    agent.start()  # the retained removal comes again: nothing more to do
    double.wait_for(lambda: double.active(DEVICE, "affine") is not None, "online again")
    assert added(agent, "affine") == 1.0
    assert httpx.get(f"{agent.api_url}/v2/models/{SHIFT}").status_code == 404
    assert sum(e.type == "removed" for e in double.device_events(DEVICE)) == 1


def test_a_removed_model_can_be_deployed_again(
    double: ControllerDouble, agent: AgentProcess, base: Release, both: Release, models_dir: Path
) -> None:
    double.publish_desired(DEVICE, double.removal(DEVICE, SHIFT, now=datetime.now(UTC)))
    double.wait_for_event(DEVICE, "removed")

    again = deploy(double, shift_release(double, models_dir, 2))

    assert double.wait_for_final(DEVICE, sequence_of(again)).type == "committed"
    assert added(agent, SHIFT) == 20.0
    assert added(agent, "affine") == 1.0


# Each model is killed in a different state of the update table, each state once per
# model. States that need a second kill or a tampered artifact are in the one-model
# matrix (test_crash_matrix.py); here the point is two journals recovered at one boot.
SINGLE_KILL_STATES = [
    name
    for name, crash in CRASHES.items()
    if len(crash.kill_in) == 1 and crash.artifact == "normal"
]
PAIRS = [
    (state, SINGLE_KILL_STATES[(i + 3) % len(SINGLE_KILL_STATES)])
    for i, state in enumerate(SINGLE_KILL_STATES)
]


@pytest.mark.parametrize(("affine_state", "shift_state"), PAIRS, ids=[f"{a}+{s}" for a, s in PAIRS])
def test_sigkill_with_two_models_mid_update_leaves_each_serving_old_or_new(
    double: ControllerDouble,
    agent: AgentProcess,
    base: Release,
    both: Release,
    models_dir: Path,
    affine_state: str,
    shift_state: str,
) -> None:
    affine_v2 = release_of(double, affine_model(models_dir / "a2.onnx", 2.0), version=2)
    shift_v2 = shift_release(double, models_dir, 2)
    agent.stop()
    affine_sequence = sequence_of(deploy(double, affine_v2))
    shift_sequence = sequence_of(deploy(double, shift_v2))
    agent.start(pause_in_state={"affine": affine_state, SHIFT: shift_state})
    agent.wait_for_journal_state(affine_state, affine_sequence, model="affine")
    agent.wait_for_journal_state(shift_state, shift_sequence, model=SHIFT)
    agent.kill()

    agent.start()
    for model, state, sequence, old, new in (
        ("affine", affine_state, affine_sequence, base, affine_v2),
        (SHIFT, shift_state, shift_sequence, both, shift_v2),
    ):
        crash = CRASHES[state]
        final = double.wait_for_final(DEVICE, sequence)
        assert final.type == crash.final, (model, double.event_summary())
        assert len(double.final_events(DEVICE, sequence)) == 1
        expected = new if crash.serves_new else old
        current = agent.current_model_dir(model)
        assert current is not None
        assert current.name == f"sha256-{expected.artifact.sha256}"
        step = 1.0 if model == "affine" else 10.0
        double.wait_for(
            lambda m=model, e=expected, s=step: added(agent, m) == s * e.version,
            f"{model} serving v{expected.version}",
        )


@pytest.mark.parametrize(
    ("budget", "final", "reason"),
    [
        (64 << 20, "failed", "insufficient_memory"),  # below what the agent holds already
        (16 << 30, "committed", None),  # room to spare: a good model ships
    ],
    ids=["too_small", "room_to_spare"],
)
def test_the_memory_budget_counts_the_models_already_serving(
    double: ControllerDouble,
    agent: AgentProcess,
    base: Release,
    models_dir: Path,
    budget: int,
    final: str,
    reason: str | None,
) -> None:
    agent.stop()
    agent.start(memory_budget_bytes=budget)
    sequence = sequence_of(deploy(double, shift_release(double, models_dir, 1)))

    event = double.wait_for_final(DEVICE, sequence)

    assert (event.type, event.reason) == (final, reason), double.event_summary()
    assert added(agent, "affine") == 1.0  # the model already serving is untouched
    if final == "failed":
        assert agent.current_model_dir(SHIFT) is None
        assert httpx.get(f"{agent.api_url}/v2/models/{SHIFT}").status_code == 404
    else:
        assert added(agent, SHIFT) == 10.0


def test_a_data_directory_of_the_one_model_agent_is_adopted_at_start(
    double: ControllerDouble, agent: AgentProcess, base: Release
) -> None:
    # Put the data directory back into the layout of agents before ADR 0003: one model, its
    # links in store/, its journal beside trust.json.
    agent.stop()
    store = agent.data_dir / "store"
    slot = store / "slots" / base.model
    target = f"models/sha256-{base.artifact.sha256}"
    (store / "current").symlink_to(target)
    (slot / "current").unlink()
    slot.rmdir()
    (agent.data_dir / "updates" / base.model / "journal.json").rename(
        agent.data_dir / "journal.json"
    )

    agent.start()

    double.wait_for(lambda: api_serves(agent, "affine"), "affine served again")
    assert added(agent, "affine") == 1.0
    assert agent.current_model_dir() == (store / target).resolve()
    assert not (store / "current").is_symlink()
    assert not (agent.data_dir / "journal.json").exists()
    journal = agent.journal()
    assert journal is not None
    assert journal["state"] == "committed"
    # The adopted model updates like any other.
    release = release_of(double, affine_model(agent.directory / "a3.onnx", 3.0), version=3)
    assert double.wait_for_final(DEVICE, sequence_of(deploy(double, release))).type == "committed"
    assert added(agent, "affine") == 3.0


def api_serves(agent: AgentProcess, model: str) -> bool:
    try:
        return httpx.get(f"{agent.api_url}/v2/models/{model}/ready").status_code == 200
    except httpx.HTTPError:
        return False
