"""Streamed multipart uploads written straight to disk, with a size limit per part.

Starlette's form parser spools every file part before a route sees it, with no limit on
file size; this receiver writes each file part to its own temp file as bytes arrive and
stops the moment a part exceeds its limit, so an oversized upload costs at most its
limit in disk, never the whole body. Unknown or repeated parts are refused.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from ..errors import BadRequestError, UploadTooLargeError

__all__ = ["ReceivedFile", "ReceivedForm", "receive_multipart"]

MAX_FIELD_BYTES = 1024


@dataclass
class ReceivedFile:
    path: Path
    filename: str
    size_bytes: int = 0


@dataclass
class ReceivedForm:
    files: dict[str, ReceivedFile] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        for received in self.files.values():
            received.path.unlink(missing_ok=True)


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    name: str = ""
    handle: IO[bytes] | None = None
    file: ReceivedFile | None = None
    value: bytearray = field(default_factory=bytearray)


class _Receiver:
    def __init__(
        self, directory: Path, file_limits: Mapping[str, int], field_names: set[str]
    ) -> None:
        self.directory = directory
        self.file_limits = file_limits
        self.field_names = field_names
        self.form = ReceivedForm()
        self.part = _Part()
        self.header_name = b""
        self.header_value = b""

    def on_part_begin(self) -> None:
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.part.headers[self.header_name.lower()] = self.header_value
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.part.headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if not name:
            raise BadRequestError("a multipart part has no name")
        if name in self.form.files or name in self.form.fields:
            raise BadRequestError(f"part {name!r} appears twice")
        self.part.name = name
        if b"filename" in options:
            if name not in self.file_limits:
                raise BadRequestError(f"unexpected file part {name!r}")
            fd, temp_name = tempfile.mkstemp(dir=self.directory, prefix=f"upload-{name}-")
            self.part.handle = open(fd, "wb")  # noqa: SIM115 - closed in on_part_end
            filename = options[b"filename"].decode("utf-8", "replace")
            self.part.file = ReceivedFile(Path(temp_name), Path(filename).name)
            self.form.files[name] = self.part.file
        elif name not in self.field_names:
            raise BadRequestError(f"unexpected field {name!r}")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self.part.file is not None and self.part.handle is not None:
            self.part.file.size_bytes += len(chunk)
            limit = self.file_limits[self.part.name]
            if self.part.file.size_bytes > limit:
                raise UploadTooLargeError(f"part {self.part.name!r} exceeds {limit} bytes")
            self.part.handle.write(chunk)
        else:
            self.part.value += chunk
            if len(self.part.value) > MAX_FIELD_BYTES:
                raise BadRequestError(f"field {self.part.name!r} exceeds {MAX_FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        if self.part.handle is not None:
            self.part.handle.close()
            self.part.handle = None
        elif self.part.name:
            self.form.fields[self.part.name] = self.part.value.decode("utf-8", "replace")

    def close(self) -> None:
        if self.part.handle is not None:
            self.part.handle.close()


async def receive_multipart(
    content_type: str,
    body: AsyncIterator[bytes],
    *,
    directory: Path,
    file_limits: Mapping[str, int],
    field_names: set[str],
) -> ReceivedForm:
    """Read a multipart body into temp files under ``directory``; the caller discards them."""
    media_type, params = parse_options_header(content_type)
    if media_type != b"multipart/form-data" or b"boundary" not in params:
        raise BadRequestError("expected a multipart/form-data body with a boundary")
    directory.mkdir(parents=True, exist_ok=True)
    receiver = _Receiver(directory, file_limits, field_names)
    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": receiver.on_part_begin,
            "on_part_data": receiver.on_part_data,
            "on_part_end": receiver.on_part_end,
            "on_header_field": receiver.on_header_field,
            "on_header_value": receiver.on_header_value,
            "on_header_end": receiver.on_header_end,
            "on_headers_finished": receiver.on_headers_finished,
        },
    )
    try:
        async for chunk in body:
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        receiver.close()
        receiver.form.discard()
        raise BadRequestError(f"malformed multipart body: {exc}") from exc
    except BaseException:
        receiver.close()
        receiver.form.discard()
        raise
    with contextlib.suppress(OSError):
        receiver.close()
    return receiver.form
