"""`ingest.body.decode_content`: the one inflater of request bodies (POST /api/logs and every
ingest protocol), bounded by the body limit."""

from __future__ import annotations

import zlib

import pytest

from aygolog.ingest.body import BodyError, decode_content


def test_gzip_inflates_up_to_the_limit_and_no_further() -> None:
    data = b"x" * 1000
    packed = zlib.compress(data, 9, wbits=31)
    assert decode_content(packed, "gzip", 1000) == data  # exactly the limit
    with pytest.raises(BodyError) as over:
        decode_content(packed, "gzip", 999)  # one byte over: refused, not inflated further
    assert over.value.status == 413
    members = packed + zlib.compress(b"yz", 1, wbits=31)
    assert decode_content(members, "gzip", 1002) == data + b"yz"
    bomb = zlib.compress(bytes(50 * 1024**2), 9, wbits=31)  # 50 MiB of zeros in ~50 KB
    with pytest.raises(BodyError) as exploded:
        decode_content(bomb, "gzip", 1024**2)
    assert exploded.value.status == 413
    for broken in (packed[:-4], packed[:10], b"not gzip", packed + b"\x01"):
        with pytest.raises(BodyError) as info:
            decode_content(broken, "gzip", 10_000)
        assert info.value.status == 400
    with pytest.raises(BodyError) as unknown:
        decode_content(packed, "br", 10_000)
    assert unknown.value.status == 415
