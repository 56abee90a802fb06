"""Agents per process: memory and CPU of 10,000 simulated agents in one process.

Run from the repository root: ``.venv/bin/python bench/agents_per_process.py [--devices N]``.

Setup: a Mosquitto of its own (anonymous), a controller subprocess using it, on SQLite,
or with ``--postgres URL`` (default: ``$EDGEFLEET_TEST_POSTGRES_URL``) on a fresh schema of
that PostgreSQL, dropped afterwards: the architecture's database for a site of more than
about a thousand devices, and the one a 10,000-device fleet needs here (on SQLite, the
controller's loops failed with "database is locked" and the rollout stalled),
the demo's digits model quantized and released, and ``--devices`` agents in this process
with telemetry every 10 s (``stats_window_s = 10``), each serving 0.2 requests/s, their
outboxes in memory (``fleet.outbox = "memory"``: a SQLite file per agent would need three
descriptors each, beyond this machine's limit of 20,000). The release is rolled out to
all of them (one wave), so each agent holds a verified release, a loaded model version
and its statistics, as in production; the run then keeps the fleet serving for
``--steady`` seconds.

Reported: this process's resident memory (VmRSS) before the agents, after they connected,
and after the rollout and the steady period, and its peak (VmHWM); per agent, the growth
over the baseline, next to a bare aiomqtt client's; CPU per agent over the steady period
(process CPU seconds / wall seconds / agents); and the script's wall time. The bare
client is measured in the same run: a subprocess that connects the same number of bare
aiomqtt clients (the MQTT connection every agent needs) to the same Mosquitto.

Target (issue 19): 10,000 agents in one process, every one committing the release, with
the process's peak resident memory within 1 GiB and the script done in under 10 minutes.
Only a run of at least 10,000 agents can meet it; a smaller run prints what its figures
extrapolate to, and says that it did not test the target.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiomqtt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet_fanout import one_wave_scenario, raise_file_limit, work_dir_root

from apiclient import AsyncControllerClient
from simulator.controller_process import ControllerProcess, port_or_free
from simulator.demo import prepare_demo_releases
from simulator.run import run_scenario
from tests.brokers import MosquittoServer, find_mosquitto

POSTGRES_URL_ENV = "EDGEFLEET_TEST_POSTGRES_URL"
MIB = 1024 * 1024
TARGET_AGENTS = 10_000
TARGET_RESIDENT_BYTES = 1024 * MIB
TARGET_WALL_S = 600.0


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def resident_bytes() -> int:
    return _status_bytes("VmRSS")


def peak_resident_bytes() -> int:
    return _status_bytes("VmHWM")


class Probe:
    """This process's resident memory and CPU time at the run's milestones, each printed
    as it is reached (a run that does not finish still says how far it got)."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.samples: dict[str, tuple[int, float, float]] = {}

    def mark(self, name: str) -> None:
        times = os.times()
        now = time.monotonic()
        self.samples[name] = (resident_bytes(), times.user + times.system, now)
        print(
            f"[{now - self.started:5.0f} s] {name}: resident {resident_bytes() / MIB:.0f} MiB, "
            f"peak {peak_resident_bytes() / MIB:.0f} MiB",
            flush=True,
        )


async def bare_clients_main(port: int, count: int) -> None:
    """The baseline: ``count`` bare aiomqtt clients, connected, then this process's RSS."""
    before = resident_bytes()
    clients = [
        aiomqtt.Client("127.0.0.1", port, identifier=f"bare-{i}", clean_session=False)
        for i in range(count)
    ]
    for first in range(0, count, 500):
        await asyncio.gather(*(c.__aenter__() for c in clients[first : first + 500]))
    after = resident_bytes()
    print(f"{before} {after}", flush=True)
    for client in clients:
        await client.__aexit__(None, None, None)


def bare_clients_per_client_bytes(port: int, count: int) -> float:
    output = subprocess.run(  # noqa: S603 - this script, our interpreter
        [sys.executable, __file__, "--bare-clients", str(count), "--port", str(port)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout.split()
    before, after = int(output[-2]), int(output[-1])
    return (after - before) / count


@contextmanager
def postgres_schema(base_url: str | None) -> Iterator[str]:
    """A URL of ``base_url`` whose search_path is a fresh schema, dropped afterwards;
    "" (the controller's SQLite) without a base URL."""
    if not base_url:
        yield ""
        return
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base_url, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in base_url else "?"
    try:
        yield f"{base_url}{separator}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(base_url, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


async def run(args: argparse.Namespace, state: Path, started: float) -> None:
    with postgres_schema(args.postgres) as database_url:
        await _run(args, state, started, database_url)


async def _run(args: argparse.Namespace, state: Path, started: float, database_url: str) -> None:
    probe = Probe(started)
    mosquitto = MosquittoServer(
        find_mosquitto() or "mosquitto",
        state,
        extra_config="allow_anonymous true\nmax_queued_messages 0\n",
    )
    mosquitto.start()
    controller = ControllerProcess(
        state,
        port_or_free(0),
        0,
        broker=f"mqtt://127.0.0.1:{mosquitto.port}",
        database_url=database_url,
    )
    controller.start()
    work_dir = work_dir_root()
    try:
        token = controller.create_token("operator")
        api = AsyncControllerClient(controller.url, token)
        releases = await prepare_demo_releases(api, state / "models")
        probe.mark("baseline")
        result = await run_scenario(
            one_wave_scenario(
                f"agents-per-process-{args.devices}",
                args.devices,
                outbox="memory",
                stats_window_s=10.0,
                requests_per_s=0.2,
                start_concurrency=500,
                observe_after_s=args.steady,
            ),
            seed=1,
            api=api,
            work_dir=work_dir,
            releases=releases,
            milestone=probe.mark,
        )
        await api.close()
        bare = await asyncio.to_thread(bare_clients_per_client_bytes, mosquitto.port, args.devices)
    finally:
        controller.stop()
        mosquitto.stop()
        shutil.rmtree(work_dir, ignore_errors=True)
    finals = result.recorder.final_events(releases["good"])
    committed = sum(1 for event in finals.values() if event.type == "committed")
    final = result.recorder.rollouts[0].final or {}
    outcomes = Counter(event.type for event in finals.values())
    print(f"rollout {final.get('status')}: {dict(outcomes)} {final.get('reason') or ''}")
    peak = peak_resident_bytes()
    database = "PostgreSQL" if database_url else "SQLite"
    _print_table(args.devices, args.steady, probe, committed, bare, peak, database)
    wall_s = time.monotonic() - started
    _print_verdict(args.devices, probe, committed, peak, wall_s)


def _print_table(
    n: int, steady_s: float, probe: Probe, committed: int, bare: float, peak: int, database: str
) -> None:
    baseline_rss = probe.samples["baseline"][0]
    online_rss = probe.samples["online"][0]
    settled_rss, settled_cpu, settled_t = probe.samples["settled 0"]
    end_rss, end_cpu, end_t = probe.samples["observed 0"]
    cpu_share = (end_cpu - settled_cpu) / (end_t - settled_t)
    print()
    print(f"{n} agents in one process, telemetry every 10 s, 0.2 requests/s each")
    print(f"controller database: {database}")
    print()
    print("| measure | value |")
    print("| --- | --- |")
    print(f"| resident before the agents | {baseline_rss / MIB:.0f} MiB |")
    print(f"| resident, every agent connected | {online_rss / MIB:.0f} MiB |")
    print(f"| resident, release committed | {settled_rss / MIB:.0f} MiB |")
    print(f"| resident after {steady_s:.0f} s serving | {end_rss / MIB:.0f} MiB |")
    print(f"| peak resident (VmHWM) | {peak / MIB:.0f} MiB |")
    connected = (online_rss - baseline_rss) / n
    serving = (end_rss - baseline_rss) / n
    print(f"| per agent, connected | {connected / 1024:.1f} KiB ({connected / bare:.1f}x bare) |")
    print(f"| per agent, serving | {serving / 1024:.1f} KiB ({serving / bare:.1f}x bare) |")
    print(f"| bare aiomqtt client (same run, subprocess) | {bare / 1024:.1f} KiB |")
    print(f"| CPU while serving, whole process | {cpu_share:.2f} cores |")
    print(f"| CPU per agent while serving | {cpu_share / n * 1e6:.0f} us/s |")
    print(f"| agents that committed the release | {committed} of {n} |")


def _print_verdict(n: int, probe: Probe, committed: int, peak: int, wall_s: float) -> None:
    """Met only by a run of the target's size that stayed within every bound."""
    baseline_rss = probe.samples["baseline"][0]
    end_rss = probe.samples["observed 0"][0]
    per_agent = (end_rss - baseline_rss) / n
    memory_ok = peak <= TARGET_RESIDENT_BYTES
    time_ok = wall_s < TARGET_WALL_S
    print()
    print(
        f"wall time: {wall_s:.0f} s ({'under' if time_ok else 'NOT under'} the "
        f"{TARGET_WALL_S:.0f} s target)"
    )
    print(
        f"peak resident: {peak / MIB:.0f} MiB ({'within' if memory_ok else 'NOT within'} "
        f"{TARGET_RESIDENT_BYTES / MIB:.0f} MiB)"
    )
    if n < TARGET_AGENTS:
        extrapolated = baseline_rss + per_agent * TARGET_AGENTS
        print(
            f"target ({TARGET_AGENTS} agents in <= 1 GiB, under 10 min): NOT TESTED by a run "
            f"of {n} agents; its figures extrapolate to {extrapolated / MIB:.0f} MiB "
            f"at {TARGET_AGENTS} agents"
        )
        return
    met = memory_ok and time_ok and committed == n
    print(
        f"target ({TARGET_AGENTS} agents in <= 1 GiB, under 10 min): "
        f"{'met' if met else 'NOT met'} by this run of {n} agents "
        f"({committed} committed)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--steady", type=float, default=60.0)
    parser.add_argument("--state-dir", type=Path)
    parser.add_argument(
        "--postgres",
        default=os.environ.get(POSTGRES_URL_ENV),
        help=f"the controller on a fresh schema of this PostgreSQL (default: ${POSTGRES_URL_ENV})",
    )
    parser.add_argument(
        "--sqlite", dest="postgres", action="store_const", const=None, help="SQLite, not PostgreSQL"
    )
    parser.add_argument("--bare-clients", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    started = time.monotonic()
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("simulator").setLevel(logging.INFO)
    logging.getLogger("agent").setLevel(logging.ERROR)
    logging.getLogger("mqtt").setLevel(logging.CRITICAL)
    raise_file_limit()
    if args.bare_clients:
        asyncio.run(bare_clients_main(args.port, args.bare_clients))
        return
    if args.state_dir:
        args.state_dir.mkdir(parents=True, exist_ok=True)
        asyncio.run(run(args, args.state_dir, started))
        return
    with tempfile.TemporaryDirectory(prefix="edgefleet-agents-") as directory:
        asyncio.run(run(args, Path(directory), started))


if __name__ == "__main__":
    main()
