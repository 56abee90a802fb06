"""A ~300 MB model end to end, in bounded memory: push, release, a download cut half way
and resumed, hash, and the sandboxed check with the release's golden cases.

Real processes: ``edgefleet controller serve`` and the agent's fetcher in a child process
of its own, each measured by its peak RSS (VmHWM). Neither may hold the file:
the bounds below are well under the artifact's size, and above what the processes weigh
idle (about 150 MiB for the controller, 60 MiB for the fetcher, measured here).
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.update.sandbox import SandboxLimits, check_model
from apiclient import ControllerClient
from protocol import MAX_RELEASE_ENVELOPE_BYTES, Envelope, Release
from simulator.controller_process import ControllerProcess
from tests.brokers import BrokerEndpoint
from tests.model_factory import big_mlp
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.timeout(600)

REPO_ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
# Well under the 300 MB artifact; see the module doc for what the processes weigh idle.
CONTROLLER_MAX_GROWTH_MIB = 96
FETCHER_MAX_RSS_MIB = 160


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def fetch_in_child(
    url: str, destination: Path, token: str, length: int, sha256: str, *, cut: TcpProxy | None
) -> float:
    """Download in a child process; sever ``cut`` once half is on disk. Its peak RSS."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fleet_e2e.fetch_child", url, str(destination), token,
         str(length), sha256],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    part = destination.with_suffix(destination.suffix + ".part")
    while cut is not None and process.poll() is None:
        if part.exists() and part.stat().st_size > length // 2:
            cut.sever()
            cut = None
        time.sleep(0.01)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return float(out.split()[-1])


def test_300_mb_model_is_pushed_released_resumed_and_checked_in_bounded_memory(
    tmp_path: Path,
) -> None:
    model, sha256 = big_mlp(tmp_path / "big.onnx")
    length = model.stat().st_size
    assert length > 290 * MIB
    controller = ControllerProcess(tmp_path / "controller")
    controller.start()
    try:
        assert controller.process is not None
        pid = controller.process.pid
        idle_mib = peak_rss_mib(pid)
        token = controller.create_token("admin")
        client = ControllerClient(controller.url, token)

        version = int(client.push("big", model)["version"])
        envelope = Envelope.from_json_obj(client.release("big", version)["envelope"])
        release = Release.from_unverified_envelope(envelope)
        model.unlink()

        assert release.artifact.sha256 == sha256
        assert len(envelope.to_bytes()) <= MAX_RELEASE_ENVELOPE_BYTES
        downloaded = tmp_path / "device" / "big.onnx"
        downloaded.parent.mkdir()
        with TcpProxy(BrokerEndpoint("http", "127.0.0.1", controller.http_port)) as proxy:
            url = f"http://127.0.0.1:{proxy.port}/artifacts/sha256/{sha256}"
            fetcher_mib = fetch_in_child(url, downloaded, token, length, sha256, cut=proxy)
            assert proxy.connections >= 2  # cut, then resumed on a new connection
        bundle = tmp_path / "device" / "bundle.npz"
        ref = release.check_bundle
        bundle_url = f"{controller.url}/artifacts/sha256/{ref.sha256}"
        fetch_in_child(bundle_url, bundle, token, ref.length, ref.sha256, cut=None)
        controller_mib = peak_rss_mib(pid)
        log = controller.log.read_text()
    finally:
        controller.stop()

    assert f'/artifacts/sha256/{sha256} HTTP/1.1" 206' in log  # resumed with Range
    with downloaded.open("rb") as file:
        assert hashlib.file_digest(file, "sha256").hexdigest() == sha256
    report = asyncio.run(
        check_model(
            downloaded,
            release,
            check_bundle=bundle,
            latency_budget_ms=None,
            limits=SandboxLimits(memory_bytes=3 << 30, cpu_s=120, wall_s=180.0),
        )
    )
    assert report.golden_cases >= 1
    print(
        f"artifact {length / MIB:.0f} MiB; controller peak {controller_mib:.0f} MiB "
        f"(idle {idle_mib:.0f}); fetcher peak {fetcher_mib:.0f} MiB"
    )
    assert controller_mib - idle_mib < CONTROLLER_MAX_GROWTH_MIB
    assert fetcher_mib < FETCHER_MAX_RSS_MIB
