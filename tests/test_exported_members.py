"""The public facade: a sorted `__all__`, every name importable, and no server-only imports."""

from __future__ import annotations

import subprocess
import sys

import aygolog


def test_all_is_sorted_and_complete() -> None:
    assert aygolog.__all__ == sorted(aygolog.__all__)
    for name in aygolog.__all__:
        assert hasattr(aygolog, name), name


def test_public_objects_are_documented() -> None:
    for name in aygolog.__all__:
        obj = getattr(aygolog, name)
        if callable(obj):
            assert obj.__doc__, f"{name} has no docstring"


def test_import_does_not_need_the_server_extra() -> None:
    # The SDK-only install has no redis-py or Litestar: importing aygolog must not load them.
    code = (
        "import sys, aygolog; "
        "bad = [m for m in ('redis', 'litestar', 'granian', 'nicegui') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
