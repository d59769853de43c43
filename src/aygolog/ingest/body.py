"""What every ingest protocol shares: decoding `Content-Encoding` within a size limit, and
splitting decoded entries into the ones our rules accept and the ones they refuse."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aygolog.errors import ValidationError
from aygolog.models import FieldError, Limits, NewLog
from aygolog.validation import DEFAULT_LIMITS, validate_logs

__all__ = ["BodyError", "Checked", "decode_content", "split_valid"]


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
