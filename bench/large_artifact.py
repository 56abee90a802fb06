"""A ~300 MB model through the controller and the agent's fetcher, memory and throughput.

Run from the repository root: ``.venv/bin/python bench/large_artifact.py [MB]``. It builds
an MLP of about MB megabytes (default 300; tests.model_factory.big_mlp), starts a real
controller (``edgefleet controller serve``, SQLite, embedded broker), pushes and releases
the model through the API, then downloads the artifact from the controller in child
processes, alternating two ways, twice each:

- plain: ``httpx`` streaming the response to a file, nothing else (the baseline);
- agent: ``agent.update.fetcher.HttpFetcher`` as a device runs it: free-disk check,
  capped at the signed length, resumable, SHA-256 over the bytes, fsync and rename.

It prints each download's MB/s and its process's peak RSS (VmHWM, which ``exec`` resets,
so the builder's memory is not counted: ``ru_maxrss`` would be, from the fork), the agent's
throughput as a fraction of plain (goal >= 0.8), and the controller's peak RSS (VmHWM)
after the upload, the release and the downloads. Absolute numbers depend on the machine;
compare within a run.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROUNDS = 2


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def download_plain(url: str, destination: Path, token: str) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    with (
        httpx.stream("GET", url, headers=headers, timeout=60) as response,
        destination.open("wb") as file,
    ):
        response.raise_for_status()
        for chunk in response.iter_bytes(1024 * 1024):
            file.write(chunk)


def download_agent(url: str, destination: Path, token: str, length: int, sha256: str) -> None:
    from agent.update.fetcher import FetchLimits, HttpFetcher

    fetcher = HttpFetcher(FetchLimits())
    asyncio.run(
        fetcher.download(
            url,
            destination,
            expected_length=length,
            expected_sha256=sha256,
            headers={"Authorization": f"Bearer {token}"},
        )
    )


def timed_child(args: list[str]) -> tuple[float, float]:
    """Run this script as a child doing one download; its wall time and peak RSS (MiB)."""
    started = time.monotonic()
    result = subprocess.run(  # noqa: S603 (our own script)
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False
    )
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"download child {args[0]} failed: {result.stderr[-2000:]}")
    return elapsed, float(result.stdout.split()[-1])


def main(megabytes: int) -> None:
    from apiclient import ControllerClient
    from simulator.controller_process import ControllerProcess
    from tests.model_factory import big_mlp

    with tempfile.TemporaryDirectory(prefix="edgefleet-large-") as scratch:
        directory = Path(scratch)
        model, sha256 = big_mlp(directory / "big.onnx", target_bytes=megabytes * 1024 * 1024)
        length = model.stat().st_size
        controller = ControllerProcess(directory / "controller")
        controller.start()
        try:
            assert controller.process is not None
            pid = controller.process.pid
            idle = peak_rss_mib(pid)
            token = controller.create_token("admin")
            client = ControllerClient(controller.url, token)
            started = time.monotonic()
            version = int(client.push("big", model)["version"])
            push_s = time.monotonic() - started
            after_push = peak_rss_mib(pid)
            started = time.monotonic()
            client.release("big", version)
            release_s = time.monotonic() - started
            after_release = peak_rss_mib(pid)
            model.unlink()  # the downloads need the disk
            url = f"{controller.url}/artifacts/sha256/{sha256}"
            print(f"model: {length / 1e6:.1f} MB; push {push_s:.1f} s, release {release_s:.1f} s")
            print("| download | MB/s | child peak RSS MiB |")
            print("| --- | ---: | ---: |")
            best = {"plain": 0.0, "agent": 0.0}
            for _ in range(ROUNDS):
                for kind in ("plain", "agent"):
                    target = directory / f"{kind}.bin"
                    elapsed, rss = timed_child([kind, url, str(target), token, str(length), sha256])
                    rate = length / elapsed / 1e6
                    best[kind] = max(best[kind], rate)
                    print(f"| {kind} | {rate:.0f} | {rss:.0f} |", flush=True)
                    target.unlink(missing_ok=True)
            ratio = best["agent"] / best["plain"]
            print(
                f"best agent/plain throughput: {best['agent']:.0f} / {best['plain']:.0f} MB/s "
                f"= {ratio:.2f} (goal >= 0.8)"
            )
            print(
                f"controller peak RSS: {idle:.0f} MiB idle, {after_push:.0f} MiB after the upload, "
                f"{after_release:.0f} MiB after the release, "
                f"{peak_rss_mib(pid):.0f} MiB after the downloads"
            )
        finally:
            controller.stop()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("plain", "agent"):
        kind, url, destination, token, length, sha = sys.argv[1:7]
        if kind == "plain":
            download_plain(url, Path(destination), token)
        else:
            download_agent(url, Path(destination), token, int(length), sha)
        print(f"{peak_rss_mib(os.getpid()):.1f}")
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
