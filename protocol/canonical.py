"""Canonical JSON: the JSON Canonicalization Scheme of RFC 8785 (JCS).

Invariants:
- the same value always serializes to the same bytes, whatever the key order or the
  Python types used (``1`` and ``1.0`` are the same JSON number);
- ``canonical_json(json.loads(canonical_json(v))) == canonical_json(v)``;
- values JSON cannot carry exactly are refused, not approximated: NaN and infinities,
  integers beyond I-JSON's safe range (±2**53 - 1), non-string keys, strings that are
  not valid Unicode (lone surrogates).

Signatures cover the exact payload bytes (DSSE), so canonical form is not what makes a
signature valid; it makes signing reproducible and content hashes stable.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import MalformedDocumentError

__all__ = ["MAX_SAFE_INTEGER", "canonical_json", "parse_json"]

MAX_SAFE_INTEGER = 2**53 - 1

_REPR_FLOAT = re.compile(r"^(?P<int>\d+)(?:\.(?P<frac>\d+))?(?:e(?P<exp>[+-]\d+))?$")


def canonical_json(value: Any) -> bytes:
    """Serialize ``value`` as RFC 8785 canonical JSON, UTF-8 encoded."""
    parts: list[str] = []
    _write(value, parts)
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedDocumentError(f"string is not valid Unicode: {exc.reason}") from exc


def parse_json(data: bytes | str) -> Any:
    """Parse JSON the way the canonical form is meant to be read: as I-JSON.

    Integers beyond the safe range become floats, as in ECMAScript: RFC 8785 writes a
    large integral double such as 4.533367679272093e16 as ``45333676792720930``, which
    must read back as that double, not as a different exact integer.
    Raises ``json.JSONDecodeError`` or ``UnicodeDecodeError`` on bad input, and
    ``MalformedDocumentError`` for nesting too deep to parse.
    """
    try:
        return json.loads(data, parse_int=_parse_int)
    except RecursionError as exc:
        raise MalformedDocumentError("JSON nested too deeply") from exc


def _parse_int(text: str) -> int | float:
    value = int(text)
    return value if abs(value) <= MAX_SAFE_INTEGER else float(text)


def _write(value: Any, out: list[str]) -> None:
    # bool before int: bool is a subclass of int.
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(_format_int(value))
    elif isinstance(value, float):
        out.append(_format_float(value))
    elif isinstance(value, str):
        out.append(_format_string(value))
    elif isinstance(value, Mapping):
        _write_object(value, out)
    elif isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise MalformedDocumentError(f"{type(value).__name__} is not a JSON value")


def _write_object(value: Mapping[Any, Any], out: list[str]) -> None:
    for key in value:
        if not isinstance(key, str):
            raise MalformedDocumentError(f"object key {key!r} is not a string")
    # RFC 8785 §3.2.3: keys sorted by their UTF-16 code units, not by code points.
    keys = sorted(value, key=lambda k: k.encode("utf-16-be", "surrogatepass"))
    out.append("{")
    for index, key in enumerate(keys):
        if index:
            out.append(",")
        out.append(_format_string(key))
        out.append(":")
        _write(value[key], out)
    out.append("}")


def _format_string(value: str) -> str:
    # json.dumps with ensure_ascii=False escapes exactly what RFC 8785 §3.2.2.2 asks:
    # '"', '\\', the short forms \b \f \n \r \t, and other controls as lowercase \u00xx.
    return json.dumps(value, ensure_ascii=False)


def _format_int(value: int) -> str:
    if abs(value) > MAX_SAFE_INTEGER:
        raise MalformedDocumentError(f"integer {value} is outside the I-JSON safe range")
    return str(value)


def _format_float(value: float) -> str:
    """Format like ECMAScript's Number.prototype.toString (RFC 8785 §3.2.2.3)."""
    if not math.isfinite(value):
        raise MalformedDocumentError(f"{value} is not a JSON number")
    if value == 0:
        return "0"  # also -0.0
    sign = "-" if value < 0 else ""
    match = _REPR_FLOAT.match(repr(abs(value)))
    if match is None:  # pragma: no cover - repr of a finite float always matches
        raise MalformedDocumentError(f"cannot format {value!r}")
    integer, fraction = match["int"], match["frac"] or ""
    digits = (integer + fraction).lstrip("0")
    # n: the position of the decimal point relative to the first significant digit,
    # as in ECMA-262 Number::toString (value = 0.d1d2...dk * 10**n).
    leading_zeros = len(integer + fraction) - len((integer + fraction).lstrip("0"))
    n = len(integer) - leading_zeros + int(match["exp"] or 0)
    digits = digits.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * -n + digits
    else:
        exponent = n - 1
        mantissa = digits[0] + ("." + digits[1:] if k > 1 else "")
        text = f"{mantissa}e{'+' if exponent >= 0 else '-'}{abs(exponent)}"
    return sign + text
