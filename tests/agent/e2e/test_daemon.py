"""The daemon's life: stop, offline periods, commands and trust root rotation."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from protocol import Envelope, Release, Role, SigningKey
from tests.agent.e2e.agent_process import AgentProcess
from tests.agent.e2e.conftest import DEVICE, deploy, sequence_of
from tests.agent.e2e.double import ControllerDouble
from tests.agent.e2e.models import affine_model, release_of
from tests.agent.e2e.test_update_path import assert_serving
from tests.brokers import MosquittoServer
from tests.factories import Keyring


def test_sigterm_stops_cleanly_and_the_device_shows_offline(
    double: ControllerDouble, agent: AgentProcess, base: Release
) -> None:
    double.wait_for(lambda: double.states.get(DEVICE) is not None, "a state report")
    assert agent.stop() == 0
    double.wait_for(lambda: not double.states[DEVICE].online, "the offline state")


def test_deployment_published_while_the_device_is_offline_is_applied_when_it_returns(
    double: ControllerDouble, agent: AgentProcess, base: Release, models_dir: Path
) -> None:
    agent.stop()
    new = release_of(double, affine_model(models_dir / "b.onnx", 2.0), version=2)
    sequence = sequence_of(deploy(double, new))
    agent.start()
    assert double.wait_for_final(DEVICE, sequence).type == "committed"
    assert_serving(agent, new)


def test_diagnostics_command_is_answered_and_its_replay_refused(
    double: ControllerDouble, agent: AgentProcess, base: Release
) -> None:
    first = double.command(DEVICE, "resync", now=datetime.now(UTC))
    diagnostics = double.command(DEVICE, "diagnostics", now=datetime.now(UTC))
    double.publish_command(DEVICE, first)
    double.publish_command(DEVICE, diagnostics)
    double.wait_for(
        lambda: any(e.details.get("action") == "diagnostics" for e in double.device_events(DEVICE)),
        "the diagnostics answer",
    )
    done = [e for e in double.device_events(DEVICE) if e.details.get("action") == "diagnostics"]
    assert done[0].details["models"][base.model]["current_sha256"] == base.artifact.sha256
    trust_before = agent.trust_file_bytes()
    double.publish_command(DEVICE, diagnostics)  # a duplicate: ignored quietly
    double.publish_command(DEVICE, first)  # an older sequence: refused
    assert double.wait_for_event(DEVICE, "command_refused").reason == "replayed_command"
    assert agent.trust_file_bytes() == trust_before


def rotated_trust_root(
    double: ControllerDouble, *, new_root_key: bool
) -> tuple[Envelope, list[SigningKey]]:
    """Trust root v2 with a new deployment key (and maybe a new root key, signing alone),
    and the new deployment key; the double keeps its old keys until the test switches."""
    rotated = Keyring(keys=dict(double.keyring.keys), version=2)
    rotated.keys[Role.DEPLOYMENT] = [SigningKey.generate()]
    if new_root_key:
        rotated.keys[Role.ROOT] = [SigningKey.generate()]
    return rotated.signed_trust_root(), rotated.keys[Role.DEPLOYMENT]


def test_trust_root_carried_by_a_command_is_adopted_through_rotation(
    double: ControllerDouble, agent: AgentProcess, base: Release, models_dir: Path
) -> None:
    v2, new_keys = rotated_trust_root(double, new_root_key=False)
    # After a rotation the controller signs with the new deployment key and carries v2,
    # which the device walks to first: v1's root keys vouch for the new key.
    double.keyring.keys[Role.DEPLOYMENT] = new_keys
    command = double.command(DEVICE, "resync", now=datetime.now(UTC), trust_root=v2.to_json_obj())
    double.publish_command(DEVICE, command)
    double.wait_for_event(DEVICE, "command_done")

    new = release_of(double, affine_model(models_dir / "b.onnx", 2.0), version=2)
    assert double.wait_for_final(DEVICE, sequence_of(deploy(double, new))).type == "committed"
    assert_serving(agent, new)


def test_trust_root_not_signed_by_the_old_root_is_refused(
    double: ControllerDouble, agent: AgentProcess, base: Release, models_dir: Path
) -> None:
    trust_before = agent.trust_file_bytes()
    forged, _ = rotated_trust_root(double, new_root_key=True)  # signed by its new root only
    new = release_of(double, affine_model(models_dir / "b.onnx", 2.0), version=2)
    deploy(double, new, trust_root=forged.to_json_obj())
    assert double.wait_for_event(DEVICE, "deployment_refused").reason == "trust_root_rotation"
    assert agent.trust_file_bytes() == trust_before
    assert_serving(agent, base)


def test_broker_restart_mid_update_converges(
    double: ControllerDouble,
    agent: AgentProcess,
    base: Release,
    models_dir: Path,
    restartable_mosquitto: MosquittoServer,
) -> None:
    new = release_of(double, affine_model(models_dir / "b.onnx", 2.0), version=2)
    double.artifacts.mode = "trickle"  # the download takes seconds: time to restart
    sequence = sequence_of(deploy(double, new))
    agent.wait_for_journal_state("fetching", sequence)
    restartable_mosquitto.restart()

    def converged() -> bool:
        active = double.active(DEVICE, new.model)
        return active is not None and active.version == 2

    def committed() -> bool:
        journal = agent.journal()
        return bool(journal and journal["state"] == "committed" and journal["final_reported"])

    double.wait_for(committed, "the deployment to commit")
    double.wait_for(converged, "the retained state to show the new release")
    assert_serving(agent, new)


def test_bad_broker_credentials_stop_the_agent_without_a_retry_loop(
    tmp_path: Path,
    double: ControllerDouble,
    password_mosquitto: tuple[MosquittoServer, str, str],
    topic_prefix: str,
) -> None:
    server, user, _password = password_mosquitto
    process = AgentProcess(
        tmp_path / "locked-out",
        device_id=DEVICE,
        broker=server.endpoint,
        prefix=topic_prefix,
        controller_url=double.url,
        trust_root=double.keyring.signed_trust_root().to_bytes(),
    )
    process.start(mqtt_username=user, mqtt_password="wrong")
    assert process.process is not None
    assert process.process.wait(timeout=60) == 4
    assert "refused the credentials" in process.log.read_text()
