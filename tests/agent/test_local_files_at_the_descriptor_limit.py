"""At the descriptor limit the agent's files fail with its own error and keep their content.

Seen under a thousand simulated devices: a raw ``OSError: [Errno 24] Too many open
files`` escaped the updater. Each case runs in a child process whose descriptor limit
is used up, because the limit is per process and would break the test runner itself.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from agent.update.machine import Journal
from agent.update.state_files import load_journal, persist_journal
from protocol import ReleaseRef

RELEASE = ReleaseRef(model="digits", version=3, sha256="ab" * 32)

# Runs the setup, uses up every descriptor, runs the body, prints its error as JSON.
_AT_THE_LIMIT = """
import json, os, resource, sys
from pathlib import Path
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
{setup}
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
try:
{body}
except Exception as exc:
    for fd in held:
        os.close(fd)
    print(json.dumps({{"type": type(exc).__name__, "reason": getattr(exc, "reason", None),
                      "message": str(exc)}}))
    sys.exit(0)
print(json.dumps({{"type": None}}))
"""


def run_at_the_limit(setup: str, body: str) -> dict[str, str | None]:
    script = _AT_THE_LIMIT.format(setup=setup, body=textwrap.indent(body, "    "))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    answer: dict[str, str | None] = json.loads(done.stdout.splitlines()[-1])
    return answer


def test_persisting_the_journal_at_the_descriptor_limit_is_a_local_write_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.json"
    old = Journal.begin(7, RELEASE)
    persist_journal(path, old)

    error = run_at_the_limit(
        "from agent.update.state_files import load_journal, persist_journal\n"
        f"journal = load_journal(Path({str(path)!r}))",
        f"persist_journal(Path({str(path)!r}), journal.give_up())",
    )

    assert error["type"] == "LocalWriteError"
    assert error["reason"] == "local_write_failed"
    assert "Too many open files" in str(error["message"])
    assert load_journal(path) == old


def test_activating_a_model_at_the_descriptor_limit_is_a_local_write_error(
    tmp_path: Path,
) -> None:
    store_root = tmp_path / "store"
    model = tmp_path / "model.onnx"
    model.write_bytes(b"model bytes")
    sha256 = hashlib.sha256(b"model bytes").hexdigest()

    error = run_at_the_limit(
        "from agent.update.store import ModelStore\n"
        f"store = ModelStore(Path({str(store_root)!r}), 'digits')\n"
        f"store.stage({sha256!r}, 'model.onnx', Path({str(model)!r}))",
        f"store.activate({sha256!r})",
    )

    assert error["type"] == "LocalWriteError"
    assert "Too many open files" in str(error["message"])
    # The symlink may have switched without its directory fsync: either way it names a
    # complete model, and the update's rollback puts back what served before.
    current = store_root / "slots" / "digits" / "current"
    assert not current.exists() or (current / "model.onnx").read_bytes() == b"model bytes"
