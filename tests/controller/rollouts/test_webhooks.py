"""Webhooks reach a real HTTP receiver, signed, and are retried until they get through."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlmodel import Session, select

from controller.app import create_app
from controller.db import session_scope
from controller.rollouts.tables import RolloutEventRecord
from controller.rollouts.webhooks import deliver_webhooks, sign_body
from controller.settings import Settings, load_settings
from tests.controller.conftest import TEST_PASSPHRASE, ctx
from tests.controller.fleet_fixtures import fleet_of

SECRET = "webhook secret"


class Receiver:
    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.status = 200

    @property
    def handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                self.send_response(receiver.status)
                self.end_headers()

        return Handler


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    state = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), state.handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def hooked_app(
    tmp_path: Path, database_url: str, receiver: tuple[Receiver, str]
) -> Iterator[FastAPI]:
    settings: Settings = load_settings(
        environ={},
        overrides={
            "data_dir": tmp_path / "data",
            "database_url": database_url,
            "webhook_urls": receiver[1],
            "webhook_secret": SECRET,
            "webhook_max_attempts": 2,
        },
    )
    app = create_app(settings, environ={"EDGEFLEET_KEY_PASSPHRASE": TEST_PASSPHRASE})
    yield app
    ctx(app).engine.dispose()


def add_event(app: FastAPI, kind: str) -> None:
    with session_scope(ctx(app).engine) as session:
        session.add(RolloutEventRecord(rollout_id="ro-1", kind=kind, details={"wave": 0}))


def deliver(app: FastAPI) -> int:
    async def once() -> int:
        async with httpx.AsyncClient() as client:
            return await deliver_webhooks(fleet_of(ctx(app)), client)

    return asyncio.run(once())


def statuses(app: FastAPI) -> list[str]:
    with Session(ctx(app).engine) as session:
        return [row.webhook_status for row in session.exec(select(RolloutEventRecord)).all()]


def test_rollout_events_are_posted_with_an_hmac_signature(
    hooked_app: FastAPI, receiver: tuple[Receiver, str]
) -> None:
    add_event(hooked_app, "rollout_aborted")
    add_event(hooked_app, "wave_started")  # not a webhook kind

    assert deliver(hooked_app) == 1

    [(headers, body)] = receiver[0].received
    assert json.loads(body)["kind"] == "rollout_aborted"
    assert headers["X-Edgefleet-Signature"] == sign_body(SECRET, body)
    assert sorted(statuses(hooked_app)) == ["delivered", "none"]


def test_a_refusing_receiver_gets_the_event_again_then_it_is_marked_failed(
    hooked_app: FastAPI, receiver: tuple[Receiver, str]
) -> None:
    receiver[0].status = 503
    add_event(hooked_app, "rollout_paused")

    deliver(hooked_app)
    after_first = statuses(hooked_app)
    deliver(hooked_app)

    assert after_first == ["pending"]
    assert statuses(hooked_app) == ["failed"]
    assert len(receiver[0].received) == 2
