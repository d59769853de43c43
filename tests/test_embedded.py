"""`EmbeddedRedis` with a data directory: persistence settings and the directory lock."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from aygolog.embedded import DataDirInUse, EmbeddedRedis


def _config(server: EmbeddedRedis, name: str) -> str:
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(f"CONFIG GET {name}\r\n".encode())
        return sock.recv(4096).decode()


def test_a_data_dir_is_locked_while_its_server_runs(tmp_path: Path) -> None:
    first = EmbeddedRedis(appendonly=True, data_dir=tmp_path).start()
    try:
        assert "everysec" in _config(first, "appendfsync")
        second = EmbeddedRedis(appendonly=True, data_dir=tmp_path, lock_timeout=0.3)
        with pytest.raises(DataDirInUse, match=r"is in use by aygolog \(pid \d+\)"):
            second.start()
        assert not second.running
        first.kill()  # a crash: the lock stays with us, and start() takes up the same files
        first.start()
    finally:
        first.stop()
    with EmbeddedRedis(appendonly=True, data_dir=tmp_path, lock_timeout=0.3) as again:
        assert again.running  # free once the first server has stopped


def test_appendfsync_is_checked() -> None:
    with pytest.raises(ValueError, match="appendfsync"):
        EmbeddedRedis(appendonly=True, appendfsync="sometimes")
