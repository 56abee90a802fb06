"""A malformed dashboard session cookie is no session: the login form (401), never a 500.

Found in the security review: a signature with a non-ASCII character, or ``²`` as the
expiry (``str.isdigit`` says yes, ``int`` says no), made the dashboard answer 500.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from controller.tokens import Role
from controller.ui.sessions import SESSION_COOKIE
from tests.controller import conftest as controller_fixtures
from tests.controller.ui.conftest import log_in

app, settings = controller_fixtures.app, controller_fixtures.settings
client, tokens = controller_fixtures.client, controller_fixtures.tokens

MAC = "0" * 64
# What a browser (or anyone) can put in a Cookie header: latin-1, minus the separators.
COOKIE_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters=';,"\\')
# Cookies that nearly parse: what ``str.isdigit`` takes for digits, hex with a stray letter.
DIGITISH = st.text(st.sampled_from("0123456789\xb2\xb3\xb9"), min_size=1, max_size=12)
HEXISH = st.text(st.sampled_from("0123456789abcdef\xe9\xff\xb2 "), min_size=64, max_size=64)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'controller.db'}"


def page_with_cookie(app: FastAPI, value: str) -> int:
    """The status of a dashboard page asked for with this cookie, sent as raw bytes.

    Starlette decodes headers as latin-1, so ``\\xb2`` arrives as ``²``. (The TestClient
    re-encodes header values as UTF-8 and could not send it.)
    """
    header = f"{SESSION_COOKIE}={value}".encode("latin-1")

    async def get() -> int:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            response = await http.get("/ui/devices", headers=[(b"cookie", header)])
            return response.status_code

    return asyncio.run(get())


@pytest.mark.parametrize(
    "value",
    [
        f"abc.1900000000.{'é' * 64}",  # a non-ASCII signature
        f"abc.²³.{MAC}",  # superscript digits as the expiry
        f"abc.1900000000\xb9.{MAC}",  # a superscript after real digits
        f"\xe9\xe9.1900000000.{MAC}",  # a non-ASCII token id
        f"{'a' * 40}.1900000000.{MAC}",  # a token id longer than any
        f"abc.{'9' * 400}.{MAC}",  # an expiry no clock will reach
        "..",
        ".",
    ],
)
def test_a_malformed_session_cookie_is_no_session(app: FastAPI, value: str) -> None:
    assert page_with_cookie(app, value) == 401


def test_a_malformed_cookie_beside_a_valid_login_is_no_session(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    log_in(client, tokens[Role.VIEWER])
    good = client.cookies[SESSION_COOKIE]
    token_id, expires, mac = good.split(".")

    assert page_with_cookie(app, good) == 200
    assert page_with_cookie(app, f"{token_id}.{expires}.{mac[:-1]}\xe9") == 401
    assert page_with_cookie(app, f"{token_id}.{expires}\xb2.{mac}") == 401


@hypothesis_settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    token_id=st.one_of(
        st.text(COOKIE_CHARS, max_size=40), st.from_regex(r"[0-9a-f]{16}", fullmatch=True)
    ),
    expires=st.one_of(DIGITISH, st.text(COOKIE_CHARS, max_size=14)),
    mac=st.one_of(HEXISH, st.text(COOKIE_CHARS, max_size=70)),
)
def test_no_cookie_made_of_three_dotted_parts_gets_a_500(
    app: FastAPI, token_id: str, expires: str, mac: str
) -> None:
    assert page_with_cookie(app, f"{token_id}.{expires}.{mac}") == 401


@hypothesis_settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(value=st.text(COOKIE_CHARS, max_size=300))
def test_no_cookie_value_gets_a_500(app: FastAPI, value: str) -> None:
    assert page_with_cookie(app, value) == 401
