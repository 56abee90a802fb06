"""``inference_threads = "auto"``: the device's physical cores, reported where it runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.backends import physical_cores, runtime_options
from agent.config import AgentConfig

# Two packages, two cores each, two hyper-threads per core: 8 logical CPUs, 4 cores.
CPUINFO = "".join(
    f"processor\t: {cpu}\nphysical id\t: {cpu // 4}\ncore id\t\t: {cpu % 4 // 2}\n\n"
    for cpu in range(8)
)


def test_hyper_threads_of_one_core_count_once(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO)
    assert physical_cores(cpuinfo, allowed_cpus=8) == 4


def test_the_cpus_this_process_may_use_cap_the_cores(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO)
    assert physical_cores(cpuinfo, allowed_cpus=3) == 3
    assert physical_cores(cpuinfo) == min(4, len(os.sched_getaffinity(0)))


def test_without_cpuinfo_the_cpus_this_process_may_use_count(tmp_path: Path) -> None:
    assert physical_cores(tmp_path / "missing") == len(os.sched_getaffinity(0))


def test_auto_is_the_default_and_resolves_to_physical_cores(tmp_path: Path) -> None:
    config = AgentConfig(device_id="d-1", data_dir=tmp_path, trust_root=tmp_path / "root")
    assert config.inference_threads == "auto"
    options = runtime_options(providers=("CPUExecutionProvider",), intra_op_threads="auto")
    assert options.intra_op_threads == physical_cores()


@pytest.mark.parametrize("threads", [0, -1, "many"])
def test_thread_counts_that_cannot_work_are_refused(tmp_path: Path, threads: object) -> None:
    with pytest.raises(ValidationError, match="inference_threads"):
        AgentConfig(
            device_id="d-1",
            data_dir=tmp_path,
            trust_root=tmp_path / "root",
            inference_threads=threads,  # type: ignore[arg-type]
        )
