"""Every way an application can call the agent, for an image model and the digits MLP.

Run from the repository root: ``.venv/bin/python bench/serving_paths.py``. SqueezeNet
comes from the onnx package (1x3x224x224 FP32 in, 1000 classes out); the digits MLP is
trained at run time. Nothing is downloaded.

For each model, with the same intra-op threads everywhere (the agent's default, "auto":
the physical cores this process may use), batch 1, in interleaved rounds:

- bare: ``InferenceSession.run``, the baseline;
- in-process: ``ModelServer.infer`` with statistics on;
- HTTP binary: ``edgefleet-agent serve-local`` in a subprocess over one keep-alive loopback
  connection, tensors as binary data both ways (the binary tensor data extension);
- HTTP JSON: the same server, the request's JSON encoded once beforehand;
- Unix socket binary: the same server on its Unix domain socket.

The HTTP client is a raw socket (pre-built request bytes, the answer read by its
Content-Length): its own cost is part of each figure. Memory: VmRSS of the serve-local
process once it listens with the model loaded, against a fresh Python process that opens
the same session with the same threads and runs it once.

Compare ratios and differences, not absolute numbers.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_inference import (
    CONTENT_LENGTH,
    Timing,
    interleaved,
    rss_mb,
    stats_recorder,
)

from agent.backends import physical_cores
from agent.serving.server import ModelServer
from simulator.demo_models import build_digits_model
from tensors import RuntimeOptions
from tests.model_factory import onnx_reference_models

REPO = Path(__file__).resolve().parents[1]
TARGET_INPROC_RATIO = 1.10
TARGET_RSS_EXTRA_MB = 40.0

Feeds = dict[str, np.ndarray[Any, Any]]


@dataclass(frozen=True)
class Model:
    label: str
    name: str
    path: Path
    inputs: list[Feeds]
    rounds: int
    calls: int
    http_target_ms: float  # HTTP binary over in-process, p50


def squeezenet() -> Path:
    return next(path for path in onnx_reference_models() if path.stem == "light_squeezenet")


class RawClient:
    """One keep-alive connection over TCP or a Unix socket; answers read by length."""

    def __init__(self, address: int | Path) -> None:
        if isinstance(address, Path):
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._socket.connect(str(address))
        else:
            self._socket = socket.create_connection(("127.0.0.1", address))
            self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def exchange(self, request: bytes) -> tuple[bytes, bytes]:
        sock = self._socket
        sock.sendall(request)
        data = sock.recv(1 << 20)
        while b"\r\n\r\n" not in data:
            data += sock.recv(1 << 20)
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"the server answered {head.splitlines()[0]!r}: {body[:200]!r}")
        found = CONTENT_LENGTH.search(head)
        if found is None:
            raise RuntimeError(f"no content-length in {head!r}")
        chunks, have, length = [body], len(body), int(found.group(1))
        while have < length:
            chunk = sock.recv(1 << 20)
            chunks.append(chunk)
            have += len(chunk)
        return head, b"".join(chunks)

    def close(self) -> None:
        self._socket.close()


def http_request(name: str, body: bytes, extra_headers: str = "") -> bytes:
    return (
        f"POST /v2/models/{name}/infer HTTP/1.1\r\nhost: agent\r\n{extra_headers}"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


def json_request(name: str, feeds: Feeds) -> bytes:
    tensors = [
        {"name": key, "shape": list(a.shape), "datatype": "FP32", "data": a.ravel().tolist()}
        for key, a in feeds.items()
    ]
    body = json.dumps({"inputs": tensors}).encode()
    return http_request(name, body, "content-type: application/json\r\n")


def binary_request(name: str, feeds: Feeds) -> bytes:
    tensors = [
        {
            "name": key,
            "shape": list(a.shape),
            "datatype": "FP32",
            "parameters": {"binary_data_size": a.nbytes},
        }
        for key, a in feeds.items()
    ]
    header = json.dumps({"inputs": tensors, "parameters": {"binary_data_output": True}}).encode()
    body = header + b"".join(a.tobytes() for a in feeds.values())
    return http_request(name, body, f"inference-header-content-length: {len(header)}\r\n")


def bare_session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def bare_rss_mb(model: Model, threads: int) -> float:
    """RSS of a fresh Python that opens the same session and runs it once."""
    shape = list(next(iter(model.inputs[0].values())).shape)
    script = (
        "import sys, numpy as np, onnxruntime as ort\n"
        f"o = ort.SessionOptions(); o.intra_op_num_threads = {threads}; "
        "o.inter_op_num_threads = 1\n"
        "s = ort.InferenceSession(sys.argv[1], o, providers=['CPUExecutionProvider'])\n"
        f"s.run(None, {{s.get_inputs()[0].name: np.zeros({shape}, np.float32)}})\n"
        "for line in open('/proc/self/status'):\n"
        "    if line.startswith('VmRSS:'): print(int(line.split()[1]) * 1024 / 1e6)\n"
    )
    answer = subprocess.run(  # noqa: S603 - this interpreter, fixed arguments
        [sys.executable, "-c", script, str(model.path)], capture_output=True, text=True, check=True
    )
    return float(answer.stdout.strip())


def timed(call: Callable[[int], object], calls: int) -> list[float]:
    samples, clock = [], time.perf_counter
    for index in range(calls):
        started = clock()
        call(index)
        samples.append(clock() - started)
    return samples


def measure(model: Model, threads: int, directory: Path) -> dict[str, Any]:
    session = bare_session(model.path, threads)
    server = ModelServer(model.name, options=RuntimeOptions(intra_op_threads=threads))
    server.swap(server.load(model.path, "onnx", version="1", observer=stats_recorder()))
    inputs = model.inputs
    socket_path = directory / f"{model.name}.sock"
    command = ["-m", "agent", "serve-local", str(model.path), "--port", "0"]
    command += ["--name", model.name, "--threads", str(threads), "--socket", str(socket_path)]
    process = subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
        [sys.executable, *command],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline().split(":")[2].split("/")[0])
        process.stdout.readline()  # the socket line
        loaded_rss = rss_mb(process.pid)
        tcp, unix = RawClient(port), RawClient(socket_path)
        as_binary = [binary_request(model.name, feeds) for feeds in inputs]
        as_json = [json_request(model.name, feeds) for feeds in inputs]
        expected = session.run(None, inputs[0])
        check_binary_answer(tcp.exchange(as_binary[0]), expected)
        check_binary_answer(unix.exchange(as_binary[0]), expected)
        n = len(inputs)
        contenders = {
            "bare": lambda: timed(lambda i: session.run(None, inputs[i % n]), model.calls),
            "in-process": lambda: timed(lambda i: server.infer(inputs[i % n]), model.calls),
            "HTTP binary": lambda: timed(lambda i: tcp.exchange(as_binary[i % n]), model.calls),
            "HTTP JSON": lambda: timed(lambda i: tcp.exchange(as_json[i % n]), model.calls),
            "Unix binary": lambda: timed(lambda i: unix.exchange(as_binary[i % n]), model.calls),
        }
        for contender in contenders.values():  # warm-up
            contender()
        results = interleaved(contenders, model.rounds)
        tcp.close()
        unix.close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    return {
        "timings": results,
        "loaded_rss": loaded_rss,
        "bare_rss": bare_rss_mb(model, threads),
        "request_bytes": (len(as_binary[0]), len(as_json[0])),
    }


def check_binary_answer(answer: tuple[bytes, bytes], expected: list[Any]) -> None:
    head, body = answer
    length = int(head.lower().split(b"inference-header-content-length: ")[1].split(b"\r\n")[0])
    document = json.loads(body[:length])
    offset = length
    for output, want in zip(document["outputs"], expected, strict=True):
        size = output["parameters"]["binary_data_size"]
        got = np.frombuffer(body[offset : offset + size], dtype=want.dtype).reshape(want.shape)
        assert np.array_equal(got, want), output["name"]
        offset += size


def yes_no(ok: bool) -> str:
    return "yes" if ok else "**no**"


def report(model: Model, threads: int, figures: dict[str, Any]) -> None:
    t: dict[str, Timing] = figures["timings"]
    ms = 1e3
    binary_bytes, json_bytes = figures["request_bytes"]
    print(f"\n### {model.label}\n")
    print(
        f"{model.rounds} interleaved rounds of {model.calls} calls per path after one "
        f"warm-up round; {threads} intra-op thread(s) everywhere; one request is "
        f"{binary_bytes} bytes binary, {json_bytes} bytes JSON.\n"
    )
    print("| path | p50 | p95 | p50 vs baseline | target | met |")
    print("| --- | ---: | ---: | ---: | --- | --- |")
    bare, inproc = t["bare"], t["in-process"]
    print(
        f"| bare InferenceSession.run | {bare.p50_s * ms:.3f} ms | {bare.p95_s * ms:.3f} ms", end=""
    )
    print(" | — | — | — |")
    ratio = inproc.p50_s / bare.p50_s
    met = yes_no(ratio <= TARGET_INPROC_RATIO)
    print(
        f"| in-process, statistics on | {inproc.p50_s * ms:.3f} ms | {inproc.p95_s * ms:.3f} ms "
        f"| {ratio:.2f}x bare | ≤ {TARGET_INPROC_RATIO:.2f}x | {met} |"
    )
    for path in ("HTTP binary", "HTTP JSON", "Unix binary"):
        extra = (t[path].p50_s - inproc.p50_s) * ms
        if path == "HTTP binary":
            target, met = f"≤ +{model.http_target_ms} ms", yes_no(extra <= model.http_target_ms)
        elif path == "Unix binary":
            faster = t[path].p50_s <= t["HTTP binary"].p50_s
            target, met = "≤ HTTP binary", yes_no(faster)
        else:
            target, met = "—", "—"
        print(
            f"| {path} | {t[path].p50_s * ms:.3f} ms | {t[path].p95_s * ms:.3f} ms "
            f"| +{extra:.3f} ms over in-process | {target} | {met} |"
        )
    extra_rss = figures["loaded_rss"] - figures["bare_rss"]
    print(
        f"| serve-local RSS, model loaded | {figures['loaded_rss']:.1f} MB | — "
        f"| +{extra_rss:.1f} MB over bare ({figures['bare_rss']:.1f} MB) "
        f"| ≤ +{TARGET_RSS_EXTRA_MB:.0f} MB | {yes_no(extra_rss <= TARGET_RSS_EXTRA_MB)} |"
    )


def main() -> None:
    threads = physical_cores()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        directory = Path(tmp)
        digits, npz = build_digits_model(directory)
        held_out = np.load(npz)["input"].astype(np.float32)
        rng = np.random.default_rng(0)
        frames = [
            {"data_0": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(4)
        ]
        models = [
            Model("SqueezeNet 1x3x224x224", "vision", squeezenet(), frames, 10, 50, 1.0),
            Model(
                "digits MLP 1x64",
                "digits",
                digits,
                [{"input": np.ascontiguousarray(held_out[i : i + 1])} for i in range(100)],
                10,
                300,
                0.3,
            ),
        ]
        print("## Serving paths\n")
        print(
            f"Python {platform.python_version()}, onnxruntime {ort.__version__}, "
            f"{os.cpu_count()} CPUs ({threads} physical cores this process may use)."
        )
        for model in models:
            report(model, threads, measure(model, threads, directory))
    print("\nMB = 10^6 bytes (VmRSS).")


if __name__ == "__main__":
    main()
