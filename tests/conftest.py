"""Shared fixtures: real brokers, a real PostgreSQL schema per test, key material.

A test that needs Mosquitto or PostgreSQL is skipped, with a message saying how to get
it, when the service is missing; with ``CI=true`` a missing service fails the test, so CI
can never pass by skipping.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.brokers import BrokerEndpoint, MosquittoServer, find_mosquitto, run_embedded_amqtt
from tests.factories import keyring
from tests.tcp_proxy import TcpProxy

__all__ = ["keyring"]

# tests/device runs in the agent-only venv, by `make device-matrix` (see its pytest.ini).
collect_ignore = ["device"]

POSTGRES_URL_ENV = "EDGEFLEET_TEST_POSTGRES_URL"
PASSWD_TIMEOUT_S = 10.0


def _time_budget_s(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    return float(marker.args[0]) if marker and marker.args else 0.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests with the largest time budget (their timeout marker) first, the rest in
    file order: with `-n 4 --dist load` the few tests that take one to two minutes then
    run beside the thousands of short ones instead of after them, at the end of the run."""
    items.sort(key=_time_budget_s, reverse=True)  # stable: file order within a budget


def require_service(name: str, how_to_get: str) -> None:
    """Skip (or, on CI, fail) a test whose service is missing."""
    message = f"{name} is not available: {how_to_get}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: a missing service is an error)")
    pytest.skip(message)


def mosquitto_binary() -> str:
    binary = find_mosquitto()
    if binary is None:
        require_service(
            "mosquitto", "install it with 'apt-get install mosquitto' (make test does as root)"
        )
        raise AssertionError("unreachable")
    return binary


@pytest.fixture
def mosquitto(restartable_mosquitto: MosquittoServer) -> BrokerEndpoint:
    """A Mosquitto broker of this test's own, on a free loopback port."""
    return restartable_mosquitto.endpoint


@pytest.fixture
def restartable_mosquitto(tmp_path: Path) -> Iterator[MosquittoServer]:
    server = MosquittoServer(mosquitto_binary(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def password_mosquitto(tmp_path: Path) -> Iterator[tuple[MosquittoServer, str, str]]:
    """A Mosquitto that accepts only user ``device`` with the returned password."""
    binary = mosquitto_binary()
    passwd_binary = shutil.which("mosquitto_passwd") or shutil.which(
        "mosquitto_passwd", path="/usr/bin:/usr/local/bin:/usr/sbin"
    )
    if passwd_binary is None:
        pytest.skip("mosquitto_passwd is not installed: cannot write a Mosquitto password file")
    user, password = "device", "correct-horse-battery"
    password_file = tmp_path / "passwd"
    subprocess.run(
        [passwd_binary, "-b", "-c", str(password_file), user, password],
        check=True,
        capture_output=True,
        timeout=PASSWD_TIMEOUT_S,
    )
    password_file.chmod(0o600)
    # Started as root, Mosquitto drops to the "mosquitto" user, which cannot read a
    # password file in pytest's private tmp directory; "user" is ignored when not root.
    me = pwd.getpwuid(os.geteuid()).pw_name
    server = MosquittoServer(
        binary,
        tmp_path,
        extra_config=f"user {me}\nallow_anonymous false\npassword_file {password_file}\n",
    )
    server.start()
    try:
        yield server, user, password
    finally:
        server.stop()


@pytest.fixture
def amqtt_broker() -> Iterator[BrokerEndpoint]:
    """The embedded amqtt broker, running in this process on a free loopback port."""
    with run_embedded_amqtt() as endpoint:
        yield endpoint


@pytest.fixture(params=["mosquitto", "amqtt"])
def broker(request: pytest.FixtureRequest) -> BrokerEndpoint:
    """Each broker edgefleet supports, one after the other."""
    fixture_name = "mosquitto" if request.param == "mosquitto" else "amqtt_broker"
    endpoint: BrokerEndpoint = request.getfixturevalue(fixture_name)
    return endpoint


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix no other test uses."""
    return f"edgefleet-test/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped after the test."""
    base_url = os.environ.get(POSTGRES_URL_ENV)
    if not base_url:
        require_service(
            "PostgreSQL",
            f"set {POSTGRES_URL_ENV} (make test does when PostgreSQL answers on 127.0.0.1:5432)",
        )
        raise AssertionError("unreachable")
    import psycopg

    schema = f"test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in base_url else "?"
    try:
        yield f"{base_url}{separator}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(base_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def proxy_to() -> Iterator[Callable[[BrokerEndpoint], TcpProxy]]:
    """Start TCP proxies in front of brokers; each is shut down after the test."""
    proxies: list[TcpProxy] = []

    def start(target: BrokerEndpoint) -> TcpProxy:
        proxy = TcpProxy(target).__enter__()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.__exit__(None, None, None)
