"""What serving through the agent costs, against bare onnxruntime; prints a markdown table.

Run from the repository root: ``.venv/bin/python bench/agent_inference.py``. The digits
MLP is trained at run time into a temporary directory; nothing is downloaded.

(a) In-process: ``ModelServer.infer`` (signature checks, timing, and the statistics of
    ``agent.stats.recorder.StatsRecorder`` when that module exists) against a bare
    ``InferenceSession.run`` configured the same way (CPU, 1 intra-op and 1 inter-op
    thread), batch 1, the same 100 held-out inputs in the same order. Both run in this
    process, in interleaved rounds, each call timed on its own with ``perf_counter``.
    Statistics measure the arrays in batches (``agent.stats.recorder.PENDING_REQUESTS`` requests,
    on the request that completes one), so the median shows the per-request cost and the
    mean also the batches' share.
(b) HTTP: ``edgefleet-agent serve-local`` in a subprocess, called over one keep-alive
    loopback connection by a raw-socket client (pre-built request bytes, response read by
    its Content-Length: the leanest client Python has), interleaved with rounds of the
    in-process call of (a). Overhead = HTTP p50 - in-process p50; the client's own cost is
    part of it.
(c) Memory: VmRSS (``/proc/<pid>/status``) of the serve-local subprocess of (b), once it
    listens with the model loaded and again after the HTTP rounds, against a fresh Python
    process that only imports onnxruntime and opens the same model.

Compare the ratios and differences, not the absolute numbers, which depend on the machine.
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.serving.server import InferenceObserver, ModelServer
from simulator.demo_models import build_digits_model

REPO = Path(__file__).resolve().parents[1]
INPUTS = 100
WARMUP_CALLS = 1000
INPROC_ROUNDS = 20
INPROC_CALLS_PER_ROUND = 1000
HTTP_WARMUP_CALLS = 300
HTTP_ROUNDS = 10
HTTP_CALLS_PER_ROUND = 300
STARTUP_TIMEOUT_S = 60.0
TARGET_INPROC_RATIO = 1.10
TARGET_HTTP_OVERHEAD_MS = 0.5
TARGET_RSS_MB = 120.0
CONTENT_LENGTH = re.compile(rb"content-length: (\d+)")
URL_LINE = re.compile(r"serving http://127\.0\.0\.1:(\d+)/v2/models/(\S+)")

Feeds = dict[str, np.ndarray[Any, Any]]


@dataclass(frozen=True)
class Timing:
    p50_s: float
    p95_s: float
    mean_s: float


def timing(samples: list[float]) -> Timing:
    ordered = sorted(samples)
    return Timing(
        statistics.median(ordered),
        ordered[int(0.95 * (len(ordered) - 1))],
        statistics.fmean(ordered),
    )


def time_calls(call: Callable[[Feeds], object], inputs: list[Feeds], calls: int) -> list[float]:
    samples = []
    clock = time.perf_counter
    for index in range(calls):
        feeds = inputs[index % len(inputs)]
        started = clock()
        call(feeds)
        samples.append(clock() - started)
    return samples


def interleaved(contenders: dict[str, Callable[[], list[float]]], rounds: int) -> dict[str, Timing]:
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for round_index in range(rounds):
        # Alternate the order too, so neither side always runs right after the other.
        names = list(contenders) if round_index % 2 == 0 else list(reversed(contenders))
        for name in names:
            samples[name].extend(contenders[name]())
    return {name: timing(values) for name, values in samples.items()}


def stats_recorder() -> InferenceObserver | None:
    try:
        from agent.stats.recorder import StatsRecorder
    except ImportError:
        return None
    recorder: InferenceObserver = StatsRecorder(reference=None, now_s=time.monotonic())
    return recorder


def bare_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class RawHttpClient:
    """One keep-alive connection; requests are bytes built ahead, answers read by length."""

    def __init__(self, port: int) -> None:
        self._socket = socket.create_connection(("127.0.0.1", port))
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def exchange(self, request: bytes) -> bytes:
        sock = self._socket
        sock.sendall(request)
        data = sock.recv(65536)
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"the server answered {head.splitlines()[0]!r}: {body[:200]!r}")
        found = CONTENT_LENGTH.search(head)
        if found is None:
            raise RuntimeError(f"no content-length in {head!r}")
        length = int(found.group(1))
        while len(body) < length:
            body += sock.recv(65536)
        return body

    def close(self) -> None:
        self._socket.close()


def infer_request(name: str, x: np.ndarray[Any, Any]) -> bytes:
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "data": x.ravel().tolist(),
                }
            ]
        }
    ).encode()
    return (
        f"POST /v2/models/{name}/infer HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"no VmRSS for process {pid}")


def bare_rss_mb(model: Path) -> float:
    """RSS of a fresh Python that only imports onnxruntime and opens ``model``."""
    script = (
        "import sys, onnxruntime as ort\n"
        "o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.inter_op_num_threads = 1\n"
        "s = ort.InferenceSession(sys.argv[1], o, providers=['CPUExecutionProvider'])\n"
        "import numpy as np; s.run(None, {'input': np.zeros((1, 64), np.float32)})\n"
        "for line in open('/proc/self/status'):\n"
        "    if line.startswith('VmRSS:'): print(int(line.split()[1]) * 1024 / 1e6)\n"
    )
    answer = subprocess.run(  # noqa: S603 - this interpreter, fixed arguments
        [sys.executable, "-c", script, str(model)], capture_output=True, text=True, check=True
    )
    return float(answer.stdout.strip())


def start_serve_local(model: Path, log: Path) -> tuple[subprocess.Popen[str], int, str]:
    command = [sys.executable, "-m", "agent", "serve-local", str(model), "--port", "0"]
    with log.open("w") as log_file:
        process = subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=log_file, text=True
        )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = URL_LINE.search(line)
    if match is None:
        process.kill()
        raise RuntimeError(f"serve-local did not start: {line!r}\n{log.read_text()}")
    return process, int(match.group(1)), match.group(2)


def row(figure: str, agent: str, baseline: str, versus: str, target: str, met: str) -> str:
    return f"| {figure} | {agent} | {baseline} | {versus} | {target} | {met} |"


def yes_no(ok: bool) -> str:
    return "yes" if ok else "**no**"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        model, npz = build_digits_model(directory)
        held_out = np.load(npz)["input"].astype(np.float32)
        inputs: list[Feeds] = [
            {"input": np.ascontiguousarray(held_out[i : i + 1])} for i in range(INPUTS)
        ]

        # (a) in process
        session = bare_session(model)
        recorder = stats_recorder()
        with_stats = ModelServer("digits")
        with_stats.swap(with_stats.load(model, "onnx", version="1", observer=recorder))
        without_stats = ModelServer("digits")
        without_stats.swap(without_stats.load(model, "onnx", version="1"))
        for feeds in inputs:  # same answers, or the comparison means nothing
            expected = session.run(None, feeds)
            for served in (with_stats.infer(feeds), without_stats.infer(feeds)):
                assert all(
                    np.array_equal(a, b) for a, b in zip(served.values(), expected, strict=True)
                )

        def bare_run(feeds: Feeds) -> object:
            return session.run(None, feeds)

        for call in (bare_run, with_stats.infer, without_stats.infer):
            time_calls(call, inputs, WARMUP_CALLS)
        inproc = interleaved(
            {
                "bare": lambda: time_calls(bare_run, inputs, INPROC_CALLS_PER_ROUND),
                "agent": lambda: time_calls(with_stats.infer, inputs, INPROC_CALLS_PER_ROUND),
                "agent_nostats": lambda: time_calls(
                    without_stats.infer, inputs, INPROC_CALLS_PER_ROUND
                ),
            },
            INPROC_ROUNDS,
        )

        # (b) and (c): serve-local in a subprocess
        baseline_rss = bare_rss_mb(model)
        process, port, name = start_serve_local(model, directory / "serve-local.log")
        try:
            fresh_rss = rss_mb(process.pid)
            client = RawHttpClient(port)
            requests = [infer_request(name, feeds["input"]) for feeds in inputs]
            answer = json.loads(client.exchange(requests[0]))
            probabilities = next(o for o in answer["outputs"] if o["name"] == "probabilities")
            assert np.array_equal(
                np.asarray(probabilities["data"], np.float32).reshape(probabilities["shape"]),
                session.run(None, inputs[0])[1],
            )

            def http_round(calls: int) -> list[float]:
                samples = []
                clock = time.perf_counter
                for index in range(calls):
                    request = requests[index % INPUTS]
                    started = clock()
                    client.exchange(request)
                    samples.append(clock() - started)
                return samples

            http_round(HTTP_WARMUP_CALLS)
            http = interleaved(
                {
                    "http": lambda: http_round(HTTP_CALLS_PER_ROUND),
                    "inproc": lambda: time_calls(with_stats.infer, inputs, HTTP_CALLS_PER_ROUND),
                },
                HTTP_ROUNDS,
            )
            client.close()
            used_rss = rss_mb(process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            exit_code = process.wait(timeout=30)
        log = (directory / "serve-local.log").read_text()

    stats_note = (
        "on (agent.stats.recorder.StatsRecorder, no reference profile)"
        if recorder
        else "off (agent.stats.recorder missing)"
    )
    server_stats = "off" if "statistics are off" in log else "on"
    ratio = inproc["agent"].p50_s / inproc["bare"].p50_s
    ratio95 = inproc["agent"].p95_s / inproc["bare"].p95_s
    ratio_mean = inproc["agent"].mean_s / inproc["bare"].mean_s
    ratio_nostats = inproc["agent_nostats"].p50_s / inproc["bare"].p50_s
    overhead_ms = (http["http"].p50_s - http["inproc"].p50_s) * 1e3
    overhead95_ms = (http["http"].p95_s - http["inproc"].p95_s) * 1e3
    us, ms = 1e6, 1e3
    print("## Agent inference overhead\n")
    print(
        f"digits MLP (sklearn -> ONNX), batch 1, {INPUTS} held-out inputs; "
        f"Python {platform.python_version()}, onnxruntime {ort.__version__}, "
        f"{os.cpu_count()} CPUs. In-process: {INPROC_ROUNDS} interleaved rounds of "
        f"{INPROC_CALLS_PER_ROUND} calls per contender after {WARMUP_CALLS} warm-up calls; "
        f"statistics {stats_note}. HTTP: raw-socket keep-alive client, {HTTP_ROUNDS} rounds "
        f"of {HTTP_CALLS_PER_ROUND} requests interleaved with in-process rounds, "
        f"serve-local statistics {server_stats}, serve-local exit code {exit_code}.\n"
    )
    print(row("figure", "agent", "baseline", "agent vs baseline", "target", "met"))
    print(row("---", "---:", "---:", "---:", "---", "---"))
    print(
        row(
            "(a) in-process p50, statistics on",
            f"{inproc['agent'].p50_s * us:.2f} µs",
            f"{inproc['bare'].p50_s * us:.2f} µs (InferenceSession.run)",
            f"{ratio:.2f}x",
            f"≤ {TARGET_INPROC_RATIO:.2f}x",
            yes_no(ratio <= TARGET_INPROC_RATIO),
        )
    )
    print(
        row(
            "(a) in-process p95, statistics on",
            f"{inproc['agent'].p95_s * us:.2f} µs",
            f"{inproc['bare'].p95_s * us:.2f} µs (InferenceSession.run)",
            f"{ratio95:.2f}x",
            "—",
            "—",
        )
    )
    print(
        row(
            "(a) in-process mean, statistics on",
            f"{inproc['agent'].mean_s * us:.2f} µs",
            f"{inproc['bare'].mean_s * us:.2f} µs (InferenceSession.run)",
            f"{ratio_mean:.2f}x",
            "—",
            "—",
        )
    )
    print(
        row(
            "(a) in-process p50, statistics off",
            f"{inproc['agent_nostats'].p50_s * us:.2f} µs",
            f"{inproc['bare'].p50_s * us:.2f} µs (InferenceSession.run)",
            f"{ratio_nostats:.2f}x",
            f"(≤ {TARGET_INPROC_RATIO:.2f}x)",
            yes_no(ratio_nostats <= TARGET_INPROC_RATIO),
        )
    )
    print(
        row(
            "(b) HTTP p50",
            f"{http['http'].p50_s * ms:.3f} ms",
            f"{http['inproc'].p50_s * ms:.3f} ms (in-process)",
            f"+{overhead_ms:.3f} ms",
            f"≤ +{TARGET_HTTP_OVERHEAD_MS} ms",
            yes_no(overhead_ms <= TARGET_HTTP_OVERHEAD_MS),
        )
    )
    print(
        row(
            "(b) HTTP p95",
            f"{http['http'].p95_s * ms:.3f} ms",
            f"{http['inproc'].p95_s * ms:.3f} ms (in-process)",
            f"+{overhead95_ms:.3f} ms",
            "—",
            "—",
        )
    )
    print(
        row(
            "(c) serve-local RSS, model loaded",
            f"{fresh_rss:.1f} MB",
            f"{baseline_rss:.1f} MB (python + onnxruntime + session)",
            f"+{fresh_rss - baseline_rss:.1f} MB",
            f"≤ {TARGET_RSS_MB:.0f} MB",
            yes_no(fresh_rss <= TARGET_RSS_MB),
        )
    )
    print(
        row(
            "(c) serve-local RSS, after the HTTP rounds",
            f"{used_rss:.1f} MB",
            f"{baseline_rss:.1f} MB (python + onnxruntime + session)",
            f"+{used_rss - baseline_rss:.1f} MB",
            f"≤ {TARGET_RSS_MB:.0f} MB",
            yes_no(used_rss <= TARGET_RSS_MB),
        )
    )
    print("\nMB = 10^6 bytes (VmRSS).")


if __name__ == "__main__":
    main()
