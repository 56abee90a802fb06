"""One artifact download as a device makes it, in a process of its own (for its peak RSS).

``python -m tests.fleet_e2e.fetch_child URL DESTINATION TOKEN LENGTH SHA256``: the agent's
``HttpFetcher`` with the agent's default limits; exit 0 once the file is verified and in
place, printing this process's peak RSS in MiB (VmHWM: ``exec`` reset it, so the parent's
memory before the fork is not counted, as it would be in ``ru_maxrss``); exit 1 with the
agent's refusal on stderr.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from agent.errors import AgentError
from agent.update.fetcher import FetchLimits, HttpFetcher


def main(url: str, destination: str, token: str, length: str, sha256: str) -> int:
    fetcher = HttpFetcher(FetchLimits(backoff_base_s=0.1))
    try:
        asyncio.run(
            fetcher.download(
                url,
                Path(destination),
                expected_length=int(length),
                expected_sha256=sha256,
                headers={"Authorization": f"Bearer {token}"},
            )
        )
    except AgentError as exc:
        print(f"{exc.reason}: {exc}", file=sys.stderr)
        return 1
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            print(int(line.split()[1]) / 1024)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:6]))
