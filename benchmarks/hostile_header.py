"""One client sending a huge header at full speed: do the LB's other clients notice? (issue 15, 1)

    .venv/bin/python benchmarks/hostile_header.py [--seconds 5] [--clients 4] [--mib 256]

The LB's data plane (`ProxyServer`, default limits) runs in its own process in front of the three
fixed-answer upstreams of `proxy_bench.py`. Good clients (threads, one keep-alive connection each,
POST /api/log one after another) are timed for `--seconds` without an attack, then for as long
again while an attacker process sends `GET /api/log` with one header of `--mib` MiB, as fast as the
socket takes it (it reconnects when cut off, until the MiB are sent or the time is up). Printed:
the good clients' p50/p99 and errors in both phases, when and after how many sent bytes the
attacker got its answer, and the LB's RSS before and at most during the attack. Bounded: about
2 x `--seconds` + 3 s; every process stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from proxy_bench import HOST, free_port, wait_listening

BENCH = str(Path(__file__).parent / "proxy_bench.py")
POST = (
    b"POST /api/log HTTP/1.1\r\nHost: lb\r\nContent-Type: application/json\r\n"
    b'Content-Length: 17\r\n\r\n{"name": "good"}\n'
)


@contextlib.contextmanager
def child(*args: str, ports: list[int]) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, BENCH, *args])
    try:
        for port in ports:
            wait_listening(port, timeout=60)  # imports take seconds on a loaded machine
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_response(sock: socket.socket, buffer: bytearray) -> int:
    """Read one Content-Length response off `sock`; its status."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buffer += chunk
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end]).lower()
    length = int(head.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
    while len(buffer) < end + length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buffer += chunk
    del buffer[: end + length]
    return int(head.split(b" ", 2)[1])


def good_client(port: int, seconds: float, latencies: list[float], errors: list[int]) -> None:
    deadline = time.monotonic() + seconds
    sock: socket.socket | None = None
    buffer = bytearray()
    while time.monotonic() < deadline:
        try:
            if sock is None:
                sock = socket.create_connection((HOST, port), timeout=10)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                buffer.clear()
            began = time.perf_counter()
            sock.sendall(POST)
            status = read_response(sock, buffer)
            latencies.append(time.perf_counter() - began)
            if status != 201:
                errors.append(status)
        except OSError:
            errors.append(0)
            if sock is not None:
                sock.close()
            sock = None
    if sock is not None:
        sock.close()


def good_clients(port: int, clients: int, seconds: float) -> tuple[list[float], list[int]]:
    latencies: list[float] = []
    errors: list[int] = []
    threads = [
        threading.Thread(target=good_client, args=(port, seconds, latencies, errors))
        for _ in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors


def attacker(port: int, total: int, seconds: float, report: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """Send `total` bytes of one header, reconnecting when cut off; report each connection."""
    deadline = time.monotonic() + seconds
    piece = b"b" * (1024 * 1024)
    sent_total = 0
    while sent_total < total and time.monotonic() < deadline:
        sock = socket.create_connection((HOST, port), timeout=10)
        answer: dict[str, object] = {}

        def read(sock: socket.socket = sock, answer: dict[str, object] = answer) -> None:
            with contextlib.suppress(OSError):
                data = sock.recv(65536)
                answer["at"] = time.perf_counter()
                answer["status"] = data[9:12].decode(errors="replace") if data else "closed"

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        began = time.perf_counter()
        sent = 0
        sent_at_answer = -1
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            sock.sendall(b"GET /api/log HTTP/1.1\r\nHost: lb\r\nX-Big: ")
            while sent_total + sent < total and time.monotonic() < deadline:
                sock.sendall(piece)
                sent += len(piece)
                if "at" in answer and sent_at_answer < 0:
                    sent_at_answer = sent
        except OSError:
            pass
        reader.join(2)
        sock.close()
        sent_total += sent
        at = answer.get("at")
        report.put(
            {
                "status": answer.get("status"),
                "answer_ms": (float(at) - began) * 1000 if isinstance(at, float) else None,
                "sent_mib": sent / 2**20,
                "sent_at_answer_mib": (sent if sent_at_answer < 0 else sent_at_answer) / 2**20,
            }
        )
    report.put(None)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--mib", type=int, default=256)
    args = parser.parse_args()

    upstream_ports = [free_port() for _ in range(3)]
    port = free_port()
    with (
        child("_upstreams", *map(str, upstream_ports), ports=upstream_ports),
        child("_proxy", "uvloop", str(port), *map(str, upstream_ports), ports=[port]) as proxy,
    ):
        good_clients(port, args.clients, 1.0)  # warm-up
        cpu_start = cpu_seconds(proxy.pid)
        base_latencies, base_errors = good_clients(port, args.clients, args.seconds)
        cpu_base = cpu_seconds(proxy.pid) - cpu_start
        rss_before = rss_mib(proxy.pid)
        report: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
        attack = multiprocessing.Process(
            target=attacker, args=(port, args.mib * 2**20, args.seconds, report)
        )
        rss_peak = [rss_before]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                rss_peak[0] = max(rss_peak[0], rss_mib(proxy.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        attack.start()
        cpu_start = cpu_seconds(proxy.pid)
        try:
            latencies, errors = good_clients(port, args.clients, args.seconds)
            cpu_attack = cpu_seconds(proxy.pid) - cpu_start
        finally:
            attack.join(args.seconds + 5)
            if attack.is_alive():
                attack.kill()
            sampling.set()
            sampler.join()
        connections = []
        while (item := report.get(timeout=5)) is not None:
            connections.append(item)

    load = os.getloadavg()
    print(
        f"\n{args.clients} good clients (keep-alive POST /api/log), {args.seconds:g} s per phase; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (a shared 2-core machine)\n"
    )
    print(
        f"{'':26} {'requests':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
        f"{'LB CPU µs/request':>18}"
    )
    for label, values, errs, cpu in (
        ("without the attacker", base_latencies, base_errors, cpu_base),
        ("during the attack", latencies, errors, cpu_attack),
    ):
        print(
            f"{label:26} {len(values):9d} {statistics.median(values) * 1000:8.2f} "
            f"{percentile(values, 0.99):8.2f} {len(errs):7d} "
            f"{cpu / max(1, len(values)) * 1e6:18.1f}"
        )
    ratio = percentile(latencies, 0.99) / percentile(base_latencies, 0.99)
    print(f"\np99 during / without: {ratio:.2f}x")
    sent = sum(float(c["sent_mib"]) for c in connections)
    print(
        f"attacker: {len(connections)} connections, {sent:.1f} MiB accepted by the socket in "
        f"total (of {args.mib} MiB it tried to send)"
    )
    first = connections[0] if connections else None
    if first is not None and first["answer_ms"] is None:
        print("first connection: no answer while the attacker was sending")
    elif first is not None:
        print(
            f"first connection: answer {first['status']} after {first['answer_ms']:.1f} ms, when "
            f"{first['sent_at_answer_mib']:.2f} MiB had been handed to the kernel (this includes "
            f"the socket buffers of both sides; the LB itself decides after 64 KiB + one read)"
        )
    statuses = sorted({str(c["status"]) for c in connections})
    print(f"answers to the attacker: {', '.join(statuses)}")
    print(
        f"LB RSS: {rss_before:.1f} MiB before, {rss_peak[0]:.1f} MiB at most during the attack "
        f"(+{rss_peak[0] - rss_before:.1f} MiB)"
    )


if __name__ == "__main__":
    main()
