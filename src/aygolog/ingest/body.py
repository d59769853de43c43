"""What every ingest protocol shares: decoding `Content-Encoding` within a size limit,
splitting decoded entries into the ones our rules accept and the ones they refuse, and the
mapping helpers (`flatten` nested values into our flat attributes, `cut` long text,
`fit_service` a foreign service name to our pattern)."""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import msgspec

from aygolog.errors import ValidationError
from aygolog.models import AttributeValue, FieldError, Limits, NewLog
from aygolog.validation import DEFAULT_LIMITS, SERVICE_PATTERN, validate_logs

__all__ = [
    "BodyError",
    "Checked",
    "cut",
    "decode_content",
    "fit_service",
    "flatten",
    "split_valid",
]

_encode_json: Final = msgspec.json.Encoder().encode
_SERVICE_JUNK: Final = re.compile(r"[^A-Za-z0-9._/-]+")


class BodyError(Exception):
    """A body refused as a whole: `status` (400, 413 or 415) and a reason for the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def decode_content(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """The body with its `Content-Encoding` undone, at most `max_bytes` long.

    gzip and deflate are inflated in steps that never hold more than `max_bytes + 1` bytes of
    output, so a gzip bomb costs a bounded amount of memory and CPU and ends in a 413.

    Raises:
        BodyError: 415 for an encoding other than gzip/deflate/identity, 400 for a broken
            compressed body, 413 when the decoded body passes `max_bytes`.
    """
    name = (encoding or "identity").strip().lower()
    if name in ("identity", ""):
        if len(body) > max_bytes:
            raise BodyError(413, f"request body larger than {max_bytes} bytes")
        return body
    if name in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif name == "deflate":  # HTTP's "deflate" is the zlib format (RFC 9110 8.4.1.2)
        wbits = zlib.MAX_WBITS
    else:
        raise BodyError(415, f"unsupported Content-Encoding {name!r}; send gzip, deflate or none")
    out = bytearray()
    rest = body
    while True:
        inflater = zlib.decompressobj(wbits=wbits)
        try:
            out += inflater.decompress(rest, max_bytes + 1 - len(out))
        except zlib.error as exc:
            raise BodyError(400, f"broken {name} body: {exc}") from None
        if len(out) > max_bytes or inflater.unconsumed_tail:
            raise BodyError(413, f"decompressed body larger than {max_bytes} bytes")
        if not inflater.eof:
            raise BodyError(400, f"broken {name} body: it ends before the compressed stream does")
        rest = inflater.unused_data
        # RFC 1952 allows several gzip members; some writers pad with NULs.
        if not rest.strip(b"\0") or name == "deflate":
            return bytes(out)


@dataclass
class Checked:
    """Entries split by our rules: `accepted` in input order, and the refused ones' reasons."""

    accepted: list[NewLog]
    refused: list[FieldError] = field(default_factory=list)
    refused_count: int = 0

    def summary(self, most: int = 5) -> str:
        """A short message naming the first few refusals (for the protocol's answer)."""
        reasons = "; ".join(error.describe() for error in self.refused[:most])
        more = len(self.refused) - most
        return reasons + (f"; and {more} more" if more > 0 else "")


def split_valid(
    logs: Sequence[NewLog], *, limits: Limits = DEFAULT_LIMITS, now: datetime | None = None
) -> Checked:
    """Check `logs` with the rules of `POST /api/logs`; keep those that pass.

    Unlike `POST /api/logs` (all or nothing), a protocol with partial success stores the
    entries that pass and reports the others.
    """
    now = now or datetime.now(UTC)
    try:
        return Checked(validate_logs(logs, limits=limits, now=now))
    except ValidationError as exc:
        errors = exc.errors
    bad = {error.index for error in errors}
    accepted = validate_logs(
        [log for index, log in enumerate(logs) if index not in bad], limits=limits, now=now
    )
    return Checked(accepted, errors, len(bad))


def flatten(key: str, value: object, out: dict[str, AttributeValue], limit: int) -> None:
    """Put `value` under `key` as flat scalars: maps -> dotted keys, arrays -> JSON text,
    strings cut to `limit` bytes, non-finite floats as text."""
    if value is None:
        return
    if isinstance(value, dict):
        for sub, item in value.items():
            flatten(f"{key}.{sub}" if key else sub, item, out, limit)
        return
    if isinstance(value, list):
        value = _encode_json(value).decode()
    if isinstance(value, str):
        value = cut(value, limit)
    elif isinstance(value, float) and not math.isfinite(value):
        value = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    assert isinstance(value, str | int | float | bool)
    out[key] = value


def cut(text: str, limit: int) -> str:
    """`text` cut to at most `limit` bytes of UTF-8 (never inside a character)."""
    if len(text) * 4 <= limit:
        return text
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[:limit].decode(errors="ignore")


def fit_service(name: str, limits: Limits) -> str:
    """A foreign service name made to fit our service pattern and length (runs of other
    characters become "_"); the name itself when it fits already."""
    if len(name) <= limits.max_service_chars and SERVICE_PATTERN.fullmatch(name):
        return name
    return _SERVICE_JUNK.sub("_", name)[: limits.max_service_chars]
