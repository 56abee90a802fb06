"""The crash matrix: SIGKILL the agent inside every state of the update table.

For each state the agent is paused there (``pause_in_state``), killed with SIGKILL,
restarted, and run to rest. Whatever the state, the device then serves either the old
model or the committed new one, complete; and the deployment has exactly one final event
(the double, like the controller, keeps one event per (device, seq)).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from protocol import Release
from tests.agent.e2e.agent_process import AgentProcess
from tests.agent.e2e.conftest import DEVICE, deploy, sequence_of
from tests.agent.e2e.double import ControllerDouble
from tests.agent.e2e.models import affine_model, release_of
from tests.agent.e2e.test_update_path import assert_serving


@dataclass(frozen=True)
class Crash:
    kill_in: list[str]  # states to pause and SIGKILL in, one agent run each
    artifact: str  # how the double serves the new model
    final: str  # the deployment's final event
    serves_new: bool


CRASHES = {
    "idle": Crash(["idle"], "normal", "failed", serves_new=False),
    "fetching": Crash(["fetching"], "normal", "failed", serves_new=False),
    "verifying": Crash(["verifying"], "normal", "failed", serves_new=False),
    "staged": Crash(["staged"], "normal", "failed", serves_new=False),
    "activating": Crash(["activating"], "normal", "rolled_back", serves_new=False),
    "probation": Crash(["probation"], "normal", "rolled_back", serves_new=False),
    "committed": Crash(["committed"], "normal", "committed", serves_new=True),
    "failed": Crash(["failed"], "tampered", "failed", serves_new=False),
    "rolling_back": Crash(
        ["activating", "rolling_back"], "normal", "rolled_back", serves_new=False
    ),
    "rolled_back": Crash(["probation", "rolled_back"], "normal", "rolled_back", serves_new=False),
}


@pytest.mark.parametrize("crash", CRASHES.values(), ids=CRASHES.keys())
def test_sigkill_in_every_state_leaves_a_working_model_and_one_final_event(
    double: ControllerDouble, agent: AgentProcess, base: Release, models_dir: Path, crash: Crash
) -> None:
    new = release_of(double, affine_model(models_dir / "b.onnx", 2.0), version=2)
    agent.stop()
    double.artifacts.mode = crash.artifact
    sequence = sequence_of(deploy(double, new))
    for state in crash.kill_in:
        agent.start(pause_in_state=state)
        agent.wait_for_journal_state(state, sequence)
        agent.kill()

    agent.start()
    final = double.wait_for_final(DEVICE, sequence)

    assert final.type == crash.final, double.event_summary()
    assert_serving(agent, new if crash.serves_new else base)
    assert len(double.final_events(DEVICE, sequence)) == 1
    journal = agent.journal()
    assert journal is not None
    assert journal["final_reported"] is True
