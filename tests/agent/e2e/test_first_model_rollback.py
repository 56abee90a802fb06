"""Rolling back the first model a device ever ran: back to serving nothing, reported once.

No ``base`` fixture here: the device has no model before the one deployed, so there is no
``previous`` to return to. Whether probation rejects the model or the agent is SIGKILLed
in the middle of its update, the device ends with no ``current`` model (a restart serves
nothing), the inference API not ready, the rejected artifact collected, and exactly one
final event for the deployment.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from protocol import Release
from tests.agent.e2e.agent_process import AgentProcess
from tests.agent.e2e.conftest import DEVICE, deploy, sequence_of
from tests.agent.e2e.double import ControllerDouble
from tests.agent.e2e.models import affine_model, log1p_model, release_of
from tests.agent.e2e.test_crash_matrix import Crash
from tests.agent.e2e.test_live_probation import LIVE_INPUT, POLICY, infer
from tests.agent.e2e.test_update_path import assert_serving


def assert_serving_nothing(agent: AgentProcess, rejected: Release) -> None:
    store = agent.data_dir / "store"
    assert not (store / "current").is_symlink()
    assert not (store / "models" / f"sha256-{rejected.artifact.sha256}").exists()
    assert httpx.get(f"{agent.api_url}/v2/health/ready").status_code == 503


def api_answers(agent: AgentProcess) -> bool:
    try:
        httpx.get(f"{agent.api_url}/v2/health/ready")
    except httpx.HTTPError:
        return False
    return True


def assert_one_final_event(
    double: ControllerDouble, agent: AgentProcess, sequence: int, final_type: str
) -> None:
    finals = double.final_events(DEVICE, sequence)
    assert [e.type for e in finals] == [final_type], double.event_summary()
    journal = agent.journal()
    assert journal is not None
    assert (journal["state"], journal["final_reported"]) == (final_type, True)


@contextmanager
def live_traffic(agent: AgentProcess) -> Iterator[list[int]]:
    """Send ``LIVE_INPUT`` over the local API until the block ends; yield the 200 count."""
    answered = [0]
    stop = threading.Event()

    def run() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                try:
                    response = infer(client, agent.api_url, LIVE_INPUT)
                except httpx.HTTPError:
                    response = None
                if response is not None and response.status_code == 200:
                    answered[0] += 1
                else:
                    time.sleep(0.02)  # nothing serves yet, or any more

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield answered
    finally:
        stop.set()
        thread.join(timeout=30)


def test_first_model_failing_probation_is_rolled_back_to_serving_nothing(
    double: ControllerDouble, agent: AgentProcess, models_dir: Path
) -> None:
    # Finite on its golden inputs, NaN on the live ones: probation rejects it at once.
    first = release_of(double, log1p_model(models_dir / "log1p.onnx"), version=1)
    agent.start()
    with live_traffic(agent) as answered:
        sequence = sequence_of(deploy(double, first, probation=POLICY))
        final = double.wait_for_final(DEVICE, sequence, timeout_s=120)

    assert (final.type, final.reason) == ("rolled_back", "nonfinite_rate"), double.event_summary()
    assert answered[0] > 0  # the model did serve, and was taken out of service
    assert_one_final_event(double, agent, sequence, "rolled_back")
    assert_serving_nothing(agent, first)
    agent.stop()
    agent.start()  # a restart serves nothing either, and reports nothing again
    double.wait_for(lambda: api_answers(agent), "the inference API after the restart")
    assert_serving_nothing(agent, first)
    assert_one_final_event(double, agent, sequence, "rolled_back")


FIRST_MODEL_CRASHES = {
    # Before the store switched: there was no current model, and there is none after.
    "activating": Crash(["activating"], "normal", "rolled_back", serves_new=False),
    # After the switch: current is the new model, previous does not exist.
    "probation": Crash(["probation"], "normal", "rolled_back", serves_new=False),
    "rolling_back": Crash(["probation", "rolling_back"], "normal", "rolled_back", serves_new=False),
    "rolled_back": Crash(["probation", "rolled_back"], "normal", "rolled_back", serves_new=False),
    "staged": Crash(["staged"], "normal", "failed", serves_new=False),
    "committed": Crash(["committed"], "normal", "committed", serves_new=True),
}


@pytest.mark.parametrize("crash", FIRST_MODEL_CRASHES.values(), ids=FIRST_MODEL_CRASHES.keys())
def test_sigkill_during_the_first_update_ends_in_one_final_event(
    double: ControllerDouble, agent: AgentProcess, models_dir: Path, crash: Crash
) -> None:
    first = release_of(double, affine_model(models_dir / "a.onnx", 1.0), version=1)
    sequence = sequence_of(deploy(double, first))
    for state in crash.kill_in:
        agent.start(pause_in_state=state)
        agent.wait_for_journal_state(state, sequence)
        agent.kill()

    agent.start()
    final = double.wait_for_final(DEVICE, sequence)

    assert final.type == crash.final, double.event_summary()
    assert_one_final_event(double, agent, sequence, crash.final)
    if crash.serves_new:
        assert_serving(agent, first)
    else:
        assert_serving_nothing(agent, first)
