"""The on-disk outbox: ordered, durable across reopen and kill, bounded with a count of
what it dropped, and every SQLite failure an ``OutboxError``."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import OutboxError
from agent.link.outbox import Outbox, OutboxMessage

REPO_ROOT = Path(__file__).resolve().parents[3]


def payloads(box: Outbox) -> list[bytes]:
    return [message.payload for message in box.peek(1000)]


def test_peek_returns_messages_in_put_order_without_removing_them(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    ids = [box.put("t/events", f"m{number}".encode()) for number in range(5)]

    assert ids == sorted(ids)
    assert box.peek(3) == [
        OutboxMessage(ids[number], "t/events", f"m{number}".encode(), qos=1, retain=False)
        for number in range(3)
    ]
    assert len(box) == 5
    box.close()


def test_messages_keep_their_qos_and_retain_flags(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    box.put("t/state", b"online", qos=1, retain=True)
    box.put("t/telemetry", b"window", qos=0)

    state, telemetry = box.peek(2)
    assert (state.qos, state.retain) == (1, True)
    assert (telemetry.qos, telemetry.retain) == (0, False)
    box.close()


def test_messages_survive_close_and_reopen_in_order(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path)
    for number in range(3):
        box.put("t/events", f"m{number}".encode())
    box.ack(box.peek(1)[0].id)
    box.close()

    reopened = Outbox(path)
    assert payloads(reopened) == [b"m1", b"m2"]
    reopened.close()


def test_ids_are_never_reused_after_everything_was_acked(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path)
    last = box.put("t/events", b"old")
    box.ack(last)
    box.close()

    reopened = Outbox(path)
    assert reopened.put("t/events", b"new") > last
    reopened.close()


def test_ack_is_idempotent(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    first = box.put("t/events", b"m0")
    box.put("t/events", b"m1")

    box.ack(first)
    box.ack(first)
    box.ack(999_999)

    assert payloads(box) == [b"m1"]
    box.close()


def test_a_full_outbox_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path, max_messages=3)
    for number in range(5):
        box.put("t/telemetry", f"m{number}".encode())

    assert payloads(box) == [b"m2", b"m3", b"m4"]
    assert box.dropped == 2
    box.close()

    reopened = Outbox(path, max_messages=3)
    reopened.put("t/telemetry", b"m5")
    assert payloads(reopened) == [b"m3", b"m4", b"m5"]
    assert reopened.dropped == 3
    reopened.close()


def test_a_smaller_bound_on_reopen_trims_to_it_at_the_next_put(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path, max_messages=10)
    for number in range(6):
        box.put("t/events", f"m{number}".encode())
    box.close()

    smaller = Outbox(path, max_messages=2)
    smaller.put("t/events", b"m6")
    assert payloads(smaller) == [b"m5", b"m6"]
    assert smaller.dropped == 5
    smaller.close()


def test_next_sequence_is_strictly_increasing_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path)
    first = [box.next_sequence("events") for _ in range(3)]
    telemetry = box.next_sequence("telemetry")
    box.close()

    reopened = Outbox(path)
    assert first == [1, 2, 3]
    assert telemetry == 1  # each name counts on its own
    assert reopened.next_sequence("events") == 4
    reopened.close()


def test_next_sequence_never_repeats_when_the_process_is_killed_right_after(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.sqlite"
    # SIGKILL itself right after the call: no close, no atexit, no Python cleanup.
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from agent.link.outbox import Outbox\n"
        "print(Outbox(Path(sys.argv[1])).next_sequence('events'), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    handed_out = []
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-c", script, str(path)],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env=env,
            timeout=30,
            check=False,
        )
        assert result.returncode == -9, result.stderr
        handed_out.append(int(result.stdout))

    box = Outbox(path)
    assert handed_out == [1, 2]
    assert box.next_sequence("events") == 3
    box.close()


def test_a_file_that_is_not_a_database_is_an_outbox_error(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"this is not an SQLite database, just bytes " * 100)

    with pytest.raises(OutboxError, match="cannot open"):
        Outbox(path)
    assert path.read_bytes().startswith(b"this is not an SQLite database")


def test_a_database_with_damaged_pages_is_an_outbox_error(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path)
    for number in range(200):
        box.put("t/events", f"m{number}".encode() * 50)
    box.close()
    data = bytearray(path.read_bytes())
    # Keep the 100-byte header, scribble over the first b-tree pages.
    data[100:8192] = b"\xff" * (8192 - 100)
    path.write_bytes(bytes(data))

    with pytest.raises(OutboxError):
        Outbox(path)


def test_an_outbox_from_a_newer_agent_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    Outbox(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=99")

    with pytest.raises(OutboxError, match="schema version 99"):
        Outbox(path)


def test_sqlite_errors_after_opening_are_outbox_errors(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    box.close()

    with pytest.raises(OutboxError, match="cannot put"):
        box.put("t/events", b"m0")
