"""The Open Inference Protocol (KServe v2) over HTTP/1.1, on loopback (ARCHITECTURE.md §5).

Routes (``{name}`` may be followed by ``/versions/{version}``, which must be the version
serving)::

    GET  /v2                         server metadata
    GET  /v2/health/live             200 while the process runs
    GET  /v2/health/ready            200 once every model that should serve does, else 503
    GET  /v2/models                  every model served: name, versions, ready
    GET  /v2/models/{name}           metadata: versions, platform, inputs, outputs
    GET  /v2/models/{name}/ready     200, or 503 while no version serves
    POST /v2/models/{name}/infer     tensors in, tensors out: JSON, or binary tensor data
                                     (Inference-Header-Content-Length, as Triton/KServe)
    POST /v2/models/{name}/feedback  {"id": <a response's id>, "label": <true class>}

Invariants:
- it binds loopback unless told otherwise; it has no authentication, so it must not be
  reachable from the network;
- it is written on asyncio streams and h11, with keep-alive. Decoding, inference and
  encoding of a request run in one hop to a worker thread, so a slow model never delays
  a health check, except for fast requests: a body of at most ``INLINE_MAX_BODY_BYTES``
  for a version whose warm-up ran within ``INLINE_MAX_LATENCY_S`` is answered on the
  event loop, because the hop to a thread and back (about 0.2 ms on a 2-core device)
  costs far more than such a request;
- a request reads the serving version once and is answered by it (``model_version`` says
  which), so a swap during the request changes nothing for it;
- every client mistake is a 4xx with ``{"error": message}``: 404 for an unknown model or
  route, 400 for bodies that are not the protocol's JSON or do not fit the model, 413
  for bodies over ``max_body_bytes``, or JSON (a body without
  Inference-Header-Content-Length, or that header's part) over ``max_json_body_bytes``
  (refused from the headers before reading, and while a chunked body streams), 405 for a
  wrong method; 503 while no version serves, 500 when the runtime fails;
- the memory that bodies take is bounded across all connections, not only per request:
  before a body is read, its estimated cost (its bytes, plus ``JSON_EXPANSION`` times its
  JSON bytes, which become Python objects when parsed) is reserved from a process-wide
  ``BodyBudget`` of ``body_budget_bytes``, and given back once the request is answered.
  A request that does not fit waits up to ``BODY_BUDGET_WAIT_S`` for others to finish,
  then gets 503 with ``Retry-After``; a request larger than the whole budget runs alone.
  A client that sends slowly holds its share until its body is complete or
  ``KEEPALIVE_TIMEOUT_S`` closes the connection;
- bodies are decoded and encoded by the pure codec, ``agent.serving.codec``: JSON data
  is never cast silently, outputs round-trip exactly.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http
import ipaddress
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote

import h11

from .. import __version__
from ..errors import InferenceError, OutputNameError, RequestTooLargeError
from ..stats.recorder import Feedback, StatsRecorder
from .codec import (
    Reply,
    decode_feedback,
    decode_infer_request,
    encode_infer_response,
    encode_json,
    encode_model_metadata,
    error_reply,
    status_of,
)
from .server import LoadedVersion, ModelServer

__all__ = [
    "BODY_BUDGET_BYTES",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "MAX_BODY_BYTES",
    "MAX_JSON_BODY_BYTES",
    "BodyBudget",
    "InferenceApi",
]

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8500
MAX_BODY_BYTES = 16 * 1024 * 1024
# A JSON body becomes Python lists and floats: 4x its bytes for plain numbers, 24x for
# lists of one-element lists ("[0],", measured), so JSON gets a lower cap than binary data.
MAX_JSON_BODY_BYTES = 4 * 1024 * 1024
JSON_EXPANSION = 24
# Room for one JSON body at its cap, or six binary bodies at theirs, in flight at once.
BODY_BUDGET_BYTES = MAX_JSON_BODY_BYTES * JSON_EXPANSION
BODY_BUDGET_WAIT_S = 5.0
BUDGET_RETRY_AFTER_S = 1
MAX_HEADER_BYTES = 16 * 1024
MAX_CONNECTIONS = 64
READ_CHUNK_BYTES = 256 * 1024
# A connection must deliver its next whole request within this long, or it is closed.
KEEPALIVE_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0
DEFAULT_WORKERS = 4
INLINE_MAX_LATENCY_S = 0.001
INLINE_MAX_BODY_BYTES = 64 * 1024
# Owner and group (the applications' group) may connect; nobody else.
SOCKET_MODE = 0o660

_JSON_HEADERS = ((b"content-type", b"application/json"),)
_REASONS = {status.value: status.phrase.encode() for status in http.HTTPStatus}


def _infer(loaded: LoadedVersion, body: bytes | bytearray, json_length: int | None) -> Reply:
    """Decode, run and encode one request; runs in a worker thread."""
    try:
        request = decode_infer_request(body, json_length)
        if request.requested is not None:
            known = {spec.name for spec in loaded.signature.outputs}
            unknown = sorted(set(request.requested) - known)
            if unknown:
                raise OutputNameError(
                    f"model {loaded.name!r} has no outputs {unknown}; it has {sorted(known)}"
                )
        outputs = loaded.infer(request.inputs)
    except InferenceError as exc:
        return error_reply(status_of(exc), str(exc))
    # Every response carries an id (the request's, else a new one) that the application
    # can send back with the true class (POST …/feedback).
    request_id = request.request_id or uuid.uuid4().hex
    if isinstance(loaded.observer, StatsRecorder):
        loaded.observer.remember(request_id, outputs)
    request = request._replace(request_id=request_id)
    return encode_infer_response(loaded.name, loaded.version, outputs, request)


def _feedback(loaded: LoadedVersion, body: bytes | bytearray) -> Reply:
    """Count a request's true class against the class the model answered."""
    try:
        request_id, label = decode_feedback(body)
    except InferenceError as exc:
        return error_reply(status_of(exc), str(exc))
    observer = loaded.observer
    outcome = (
        observer.feedback(request_id, label)
        if isinstance(observer, StatsRecorder)
        else Feedback.UNKNOWN_REQUEST
    )
    if outcome is Feedback.COUNTED:
        return Reply(200, encode_json({"id": request_id, "counted": True}))
    if outcome is Feedback.NOT_ONE_CLASSIFIED_ROW:
        return error_reply(
            409,
            f"model {loaded.name!r} {loaded.version}: the answer to {request_id!r} was not "
            "one row of class probabilities, so a label cannot be compared with it",
        )
    return error_reply(
        404,
        f"no answer {request_id!r} of model {loaded.name!r} {loaded.version} awaits feedback "
        "(unknown, labeled already, from another version, or too old)",
    )


class BodyBudget:
    """The bytes that request bodies in flight may take, shared by every connection.

    Reservations are granted first come, first served (a large request is not starved by
    a stream of small ones); one larger than the whole budget is granted alone. Used only
    from the event loop's thread.
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.reserved_bytes = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    async def reserve(self, cost_bytes: int, *, wait_s: float) -> int | None:
        """Reserve ``cost_bytes`` (at most the whole budget); the bytes reserved, to give to
        ``release``, or None if they did not fit within ``wait_s``."""
        cost = min(cost_bytes, self.limit_bytes)
        if not self._waiters and self.reserved_bytes + cost <= self.limit_bytes:
            self.reserved_bytes += cost
            return cost
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((cost, granted))
        try:
            async with asyncio.timeout(wait_s):
                await granted
        except TimeoutError:
            if granted.done() and not granted.cancelled():  # granted as time ran out
                return cost
            granted.cancel()
            self._grant()  # the next in line may fit now that this one left
            return None
        except BaseException:  # the connection is cancelled (the API stops)
            if granted.done() and not granted.cancelled():
                self.release(cost)
            else:
                granted.cancel()
                self._grant()
            raise
        return cost

    def release(self, reserved_bytes: int) -> None:
        self.reserved_bytes -= reserved_bytes
        self._grant()

    def _grant(self) -> None:
        while self._waiters:
            cost, granted = self._waiters[0]
            if granted.done():  # gave up waiting
                self._waiters.popleft()
                continue
            if self.reserved_bytes + cost > self.limit_bytes:
                return
            self._waiters.popleft()
            self.reserved_bytes += cost
            granted.set_result(None)


class _BudgetExhaustedError(Exception):
    """No room in the body budget within ``BODY_BUDGET_WAIT_S``: answered 503."""


def _json_length(request: h11.Request) -> int | None:
    """The request's Inference-Header-Content-Length; ``ValueError`` if not a number."""
    for header, value in request.headers:
        if header == b"inference-header-content-length":
            return int(value)
    return None


class InferenceApi:
    """The HTTP front of one or more ``ModelServer``s; ``start`` then ``stop``."""

    def __init__(
        self,
        servers: Mapping[str, ModelServer] | ModelServer,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_json_body_bytes: int = MAX_JSON_BODY_BYTES,
        body_budget_bytes: int = BODY_BUDGET_BYTES,
        workers: int = DEFAULT_WORKERS,
        socket_path: Path | None = None,
    ) -> None:
        """``socket_path``: also listen on this Unix domain socket (mode 0660), for
        applications on the device that want no TCP port; the same protocol."""
        self._servers = (
            {servers.name: servers} if isinstance(servers, ModelServer) else dict(servers)
        )
        self.host = host
        self.port = port
        self.max_body_bytes = max_body_bytes
        self.max_json_body_bytes = min(max_json_body_bytes, max_body_bytes)
        self.budget = BodyBudget(body_budget_bytes)
        self._workers = workers
        self.socket_path = socket_path
        self._server: asyncio.Server | None = None
        self._unix_server: asyncio.Server | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._busy: set[asyncio.Task[None]] = set()
        self._stopping = False
        # The models that should serve (the daemon: those with a current version): ready
        # means each of them does, not only the ones that happened to load.
        self.should_serve: Callable[[], Iterable[str]] = lambda: ()

    @property
    def ready(self) -> bool:
        servers = self._servers
        if not servers or any(name not in servers for name in self.should_serve()):
            return False
        return all(server.ready for server in servers.values())

    def _model_index(self) -> Reply:
        servers = self._servers
        models = []
        for name in sorted(servers):
            loaded = servers[name].current
            models.append(
                {
                    "name": name,
                    "versions": [loaded.version] if loaded else [],
                    "ready": loaded is not None,
                }
            )
        return Reply(200, encode_json({"models": models}))

    def add(self, server: ModelServer) -> None:
        """Answer for ``server`` too, under its name (a model that starts serving)."""
        self._servers = {**self._servers, server.name: server}

    def remove(self, name: str) -> None:
        """Stop answering for ``name`` (a model removed, or with nothing to serve)."""
        # A new dict, swapped in whole: a request routing meanwhile sees the old or the new.
        self._servers = {key: value for key, value in self._servers.items() if key != name}

    async def start(self) -> int:
        """Listen; return the bound port (``port=0`` picks a free one)."""
        if not _is_loopback(self.host):
            logger.warning("the inference API listens on %s, beyond loopback", self.host)
        self._stopping = False
        self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="inference")
        self._server = await asyncio.start_server(
            self._serve_connection, self.host, self.port, limit=READ_CHUNK_BYTES
        )
        port: int = self._server.sockets[0].getsockname()[1]
        logger.info("inference API on http://%s:%d", self.host, port)
        if self.socket_path is not None:
            self._unix_server = await self._listen_on_socket(self.socket_path)
        return port

    async def _listen_on_socket(self, path: Path) -> asyncio.Server:
        # A socket left by a killed agent would make bind fail; anything else is kept.
        if path.is_socket():
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        server = await asyncio.start_unix_server(
            self._serve_connection, path=str(path), limit=READ_CHUNK_BYTES
        )
        os.chmod(path, SOCKET_MODE)
        logger.info("inference API on unix:%s", path)
        return server

    async def stop(self) -> None:
        """Stop listening, close idle connections, give running requests a grace period."""
        self._stopping = True
        for server in (self._server, self._unix_server):
            if server is not None:
                server.close()
        for task in self._connections - self._busy:
            task.cancel()
        if self._busy:
            _, late = await asyncio.wait(set(self._busy), timeout=STOP_GRACE_S)
            for task in late:
                task.cancel()
        if self._connections:
            await asyncio.wait(set(self._connections))
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._unix_server is not None:
            await self._unix_server.wait_closed()
            self._unix_server = None
            if self.socket_path is not None and self.socket_path.is_socket():
                self.socket_path.unlink()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= MAX_CONNECTIONS or self._stopping:
            writer.close()
            return
        self._connections.add(task)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        try:
            while not self._stopping:
                try:
                    async with asyncio.timeout(KEEPALIVE_TIMEOUT_S):
                        received = await self._receive(conn, reader, writer)
                except (TimeoutError, ConnectionError):
                    break
                except h11.RemoteProtocolError as exc:
                    status = exc.error_status_hint
                    await self._send(
                        conn, writer, error_reply(status, f"bad HTTP: {exc}"), close=True
                    )
                    break
                except RequestTooLargeError as exc:
                    await self._send(conn, writer, error_reply(413, str(exc)), close=True)
                    break
                except _BudgetExhaustedError as exc:
                    reply = error_reply(503, str(exc))
                    await self._send(
                        conn, writer, reply, close=True, retry_after_s=BUDGET_RETRY_AFTER_S
                    )
                    break
                if received is None:
                    break
                request, body, reserved = received
                self._busy.add(task)
                try:
                    reply = await self._route(request, body)
                except Exception:
                    # A bug in the agent, not the client's fault: answer, and keep serving.
                    logger.exception("the inference API failed on %r", request.target)
                    reply = error_reply(500, "internal error")
                finally:
                    # Decoded and answered: the body and its arrays are garbage now.
                    del received, body
                    self.budget.release(reserved)
                try:
                    await self._send(conn, writer, reply, close=self._stopping)
                finally:
                    self._busy.discard(task)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except (ConnectionError, h11.LocalProtocolError):
            pass
        except Exception:
            logger.exception("an inference API connection failed")
        finally:
            self._connections.discard(task)
            writer.close()

    async def _receive(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[h11.Request, bytearray, int] | None:
        """The next request, its body and the bytes of budget it holds (the caller releases
        them once it is answered); None when the client is done."""
        request: h11.Request | None = None
        body = bytearray()
        size = 0
        limit = self.max_body_bytes
        reserved = 0
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    if conn.they_are_waiting_for_100_continue:
                        writer.write(
                            conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
                        )
                    conn.receive_data(await reader.read(READ_CHUNK_BYTES))
                elif isinstance(event, h11.Request):
                    request = event
                    length, limit, cost = self._body_cost(event)
                    if cost:
                        got = await self.budget.reserve(cost, wait_s=BODY_BUDGET_WAIT_S)
                        if got is None:
                            raise _BudgetExhaustedError(
                                f"too many request bodies in flight (at most "
                                f"{self.budget.limit_bytes} bytes); retry shortly"
                            )
                        reserved = got
                    if length is not None:
                        body = bytearray(length)  # filled in place: no chunks to join
                elif isinstance(event, h11.Data):
                    if size + len(event.data) > limit:
                        raise RequestTooLargeError(self._too_large(size + len(event.data), limit))
                    if len(body) >= size + len(event.data):
                        body[size : size + len(event.data)] = event.data
                    else:  # chunked: no Content-Length to size it by
                        body += event.data
                    size += len(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    assert request is not None
                    del body[size:]
                    return request, body, reserved
                else:  # ConnectionClosed, or PAUSED after a request the client did not wait for
                    self.budget.release(reserved)
                    return None
        except BaseException:
            self.budget.release(reserved)
            raise

    def _body_cost(self, request: h11.Request) -> tuple[int | None, int, int]:
        """A request's Content-Length (None if chunked), its body limit and the bytes of
        budget to reserve for it; ``RequestTooLargeError`` if its headers say it is over."""
        length: int | None = 0  # neither Content-Length nor chunked: no body
        json_length = None
        for header, value in request.headers:
            if header == b"content-length":
                length = int(value)  # h11 checked it is a number
            elif header == b"transfer-encoding":  # h11 accepts only chunked
                length = None
            elif header == b"inference-header-content-length":
                with contextlib.suppress(ValueError):  # _route answers 400
                    json_length = max(int(value), 0)
        if json_length is None:  # all JSON
            limit = self.max_json_body_bytes
            json_bytes = limit if length is None else length
        else:
            limit = self.max_body_bytes
            json_bytes = json_length
            if json_bytes > self.max_json_body_bytes:
                raise RequestTooLargeError(
                    f"the JSON header of {json_bytes} bytes is over the limit of "
                    f"{self.max_json_body_bytes} bytes"
                )
        if length is not None and length > limit:
            raise RequestTooLargeError(self._too_large(length, limit))
        body_bytes = limit if length is None else length
        json_bytes = min(json_bytes, body_bytes)
        return length, limit, body_bytes - json_bytes + json_bytes * JSON_EXPANSION

    def _too_large(self, size: int, limit: int) -> str:
        kind = "binary" if limit == self.max_body_bytes else "JSON"
        return f"the body of {size} bytes is over the limit of {limit} bytes for a {kind} body"

    async def _send(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        reply: Reply,
        *,
        close: bool,
        retry_after_s: int | None = None,
    ) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        status, payload, allow, json_length = reply
        if json_length is None:
            headers = [*_JSON_HEADERS, (b"content-length", b"%d" % len(payload))]
        else:  # binary outputs after a JSON header (the binary tensor data extension)
            headers = [
                (b"content-type", b"application/octet-stream"),
                (b"inference-header-content-length", b"%d" % json_length),
                (b"content-length", b"%d" % len(payload)),
            ]
        if close:
            headers.append((b"connection", b"close"))
        if allow:
            headers.append((b"allow", allow))
        if retry_after_s is not None:
            headers.append((b"retry-after", b"%d" % retry_after_s))
        head = conn.send(h11.Response(status_code=status, headers=headers, reason=_REASONS[status]))
        body = conn.send(h11.Data(data=payload))
        end = conn.send(h11.EndOfMessage())
        # One write, so one send(2) and no small segment waiting for the rest.
        writer.write(b"".join((head or b"", body or b"", end or b"")))
        await writer.drain()

    async def _route(self, request: h11.Request, body: bytearray) -> Reply:
        method, target = request.method, request.target
        parts = target.split(b"?", 1)[0].decode("ascii", "replace").strip("/").split("/")
        if parts[0] != "v2":
            return error_reply(404, f"no route {target.decode('ascii', 'replace')}")
        rest = parts[1:]
        if rest == [] or rest[0] == "health":
            if method != b"GET":
                return error_reply(405, "use GET", allow=b"GET")
            if rest == []:
                return Reply(200, encode_json({"name": "edgefleet-agent", "version": __version__}))
            if rest == ["health", "live"]:
                return Reply(200, encode_json({"live": True}))
            if rest == ["health", "ready"]:
                ready = self.ready
                return Reply(200 if ready else 503, encode_json({"ready": ready}))
        elif rest == ["models"]:
            if method != b"GET":
                return error_reply(405, "use GET", allow=b"GET")
            return self._model_index()
        elif rest[0] == "models" and len(rest) >= 2:
            try:
                json_length = _json_length(request)
            except ValueError:
                return error_reply(400, "Inference-Header-Content-Length must be a number")
            parts = [unquote(part) for part in rest[1:]]
            return await self._route_model(method, parts, body, json_length)
        return error_reply(404, f"no route {target.decode('ascii', 'replace')}")

    async def _route_model(
        self, method: bytes, parts: list[str], body: bytearray, json_length: int | None
    ) -> Reply:
        name, rest = parts[0], parts[1:]
        version = None
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        if len(rest) > 1 or (rest and rest[0] not in ("ready", "infer", "feedback")):
            return error_reply(404, f"no route for model {name!r}: {'/'.join(rest)}")
        action = rest[0] if rest else "metadata"
        wanted = b"POST" if action in ("infer", "feedback") else b"GET"
        if method != wanted:
            return error_reply(405, f"use {wanted.decode()} for {action}", allow=wanted)
        server = self._servers.get(name)
        if server is None:
            return error_reply(
                404, f"unknown model {name!r}; this agent serves {sorted(self._servers)}"
            )
        loaded = server.current
        if loaded is None:
            return error_reply(503, f"model {name!r} has no version serving")
        if version is not None and version != loaded.version:
            return error_reply(
                404, f"model {name!r} version {version!r} is not serving ({loaded.version} is)"
            )
        if action == "ready":
            return Reply(200, encode_json({"name": name, "ready": True}))
        if action == "feedback":
            return _feedback(loaded, body)
        if action == "metadata":
            signature = loaded.signature
            return Reply(
                200,
                encode_model_metadata(
                    loaded.name,
                    loaded.version,
                    loaded.platform,
                    signature.inputs,
                    signature.outputs,
                    {"intra_op_threads": server.options.intra_op_threads},
                ),
            )
        if loaded.warm_latency_s <= INLINE_MAX_LATENCY_S and len(body) <= INLINE_MAX_BODY_BYTES:
            return _infer(loaded, body, json_length)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, _infer, loaded, body, json_length)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False
