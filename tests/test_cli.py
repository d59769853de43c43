"""The command line: role detection for the container image, and the client commands (`send`,
`tail`, `query`, `services`) run as real processes against a live stack, with their exit codes."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import uuid

import pytest

from aygolog.cli import EXIT_USER_ERROR, detect_role, main, running_service
from aygolog.client import LogClient
from aygolog.embedded import free_port
from support import LiveStack

# Each `aygolog` run may take its own 60 s (`aygolog()`), and a test makes up to 7 of them: on a
# busy machine (2 CPUs, load 12) one run takes 15-20 s, so 120 s was too little for a passing test.
pytestmark = pytest.mark.timeout(420)

COMMANDS = ("up", "api", "lb", "ui", "send", "tail", "query", "services", "version")


def aygolog(
    *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AYGOLOG_URL", "NO_COLOR")}
    return subprocess.run(
        [sys.executable, "-m", "aygolog", *args], input=stdin, capture_output=True, text=True,
        timeout=timeout, env=env,
    )  # fmt: skip


def ok(*args: str, stdin: str | None = None) -> str:
    result = aygolog(*args, stdin=stdin)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- no server needed --------------------------------------------------------------------------


def test_container_role_comes_from_the_seed_variables() -> None:
    seed_lb = {"ASPNETCORE_URLS": "http://+:8080", "ConnectionStrings__Redis": "10.0.0.5:6379"}
    seed_api = {
        "ConnectionStrings__Redis": "10.0.0.5:6379",
        "ServiceRegistration__ServiceName": "LogApi-Dev-instance-1",
        "ServiceRegistration__LoadBalancerUrl": "10.0.0.7:8080",
    }
    seed_ui = {"VITE_API_BASE_URL": "10.0.0.7", "VITE_API_PORT": "8080"}
    assert detect_role(seed_lb) == "lb"
    assert detect_role(seed_api) == "api"
    assert detect_role(seed_ui) == "ui"
    assert detect_role({**seed_api, "AYGOLOG_ROLE": "LB"}) == "lb"


def test_the_healthcheck_reads_the_role_and_port_from_the_container_command() -> None:
    entry = ["/opt/aygolog/bin/python", "/opt/aygolog/bin/aygolog"]
    assert running_service([*entry, "ui", "--lb-url", "http://lb:8080"]) == ("ui", None)
    assert running_service([*entry, "api", "--port", "9001"]) == ("api", 9001)
    assert running_service([*entry, "lb", "--port=8081"]) == ("lb", 8081)
    assert running_service([*entry, "auto"]) == (None, None)


def test_no_command_is_a_user_error() -> None:
    assert main([]) == EXIT_USER_ERROR


def test_help_lists_every_command_with_a_line_of_help() -> None:
    out = ok("--help")
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s+\S", out, re.MULTILINE), (command, out)


def test_bad_arguments_are_user_errors() -> None:
    for args in (["query", "--bogus"], ["query", "--limit", "0"], ["send", "x", "-l", "nope"]):
        result = aygolog(*args, "--url", "http://127.0.0.1:9")
        assert result.returncode == 1, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert "unknown level 'nope'" in result.stderr
    result = aygolog("query", "--url", "http://127.0.0.1:9", "--level", "nope", "--since", "x")
    assert result.returncode == 1
    assert result.stderr.startswith("aygolog query: --level: unknown level 'nope'")
    assert "; --since: not a time: 'x'" in result.stderr
    result = aygolog("query", "--url", "ftp://example.org")
    assert result.returncode == 1
    assert "--url" in result.stderr


@pytest.mark.parametrize(
    "args",
    [("query",), ("send", "hello"), ("services",), ("tail",)],
    ids=["query", "send", "services", "tail"],
)
def test_a_closed_port_exits_2_with_one_line(args: tuple[str, ...]) -> None:
    result = aygolog(*args, "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"aygolog {args[0]}: server unavailable:")
    assert "Connection refused" in lines[0]


def test_the_progress_bar_draws_only_for_big_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    from aygolog._cli_client import _Progress

    bar = _Progress(1000, enabled=True, after=2000)
    bar.update(1000, 500)
    assert capsys.readouterr().err == ""
    bar.update(4000, 500)
    assert "[###############               ]  50%  4,000 entries sent" in capsys.readouterr().err
    bar.finish()
    assert capsys.readouterr().err == "\r\033[K"
    quiet = _Progress(None, enabled=False, after=0)
    quiet.update(10_000, 0)
    assert capsys.readouterr().err == ""


# -- against a live stack ----------------------------------------------------------------------


def test_send_one_log(stack: LiveStack) -> None:
    service = unique("one")
    out = ok("send", "disk almost full", "--url", stack.url, "-l", "warn", "-s", service,
             "-a", "percent=91", "-a", "host=web-1")  # fmt: skip
    stored_id = out.strip()
    assert re.fullmatch(r"\d+-\d+", stored_id), out
    with LogClient(stack.url) as client:
        [entry] = client.query(service=service).items
    assert entry.id == stored_id
    assert entry.message == "disk almost full"
    assert entry.level == "warning"
    assert entry.attributes == {"percent": "91", "host": "web-1"}


def test_the_url_comes_from_the_environment(stack: LiveStack) -> None:
    service = unique("env")
    env = {**os.environ, "AYGOLOG_URL": stack.url}
    result = subprocess.run(
        [sys.executable, "-m", "aygolog", "send", "via env", "-s", service],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with LogClient(stack.url) as client:
        assert [e.message for e in client.query(service=service).items] == ["via env"]


def test_send_stdin_lines_in_batches_then_count_them(stack: LiveStack) -> None:
    service = unique("batch")
    lines = "".join(f"line {n}\n" for n in range(5000)) + "\n   \n"  # blank lines are skipped
    out = ok("send", "--url", stack.url, "-s", service, "-l", "debug", stdin=lines)
    assert out.strip() == "sent 5000 entries in 5 batch(es)"
    every = ok("query", "--url", stack.url, "-s", service, "--all", "--limit", "1000",
               "--format", "ndjson")  # fmt: skip
    entries = [json.loads(line) for line in every.splitlines()]
    assert len(entries) == 5000
    assert {e["level"] for e in entries} == {"debug"}
    assert entries[0]["message"] == "line 4999"  # newest first
    assert entries[-1]["message"] == "line 0"


def test_send_ndjson_and_a_bad_line_names_its_number(stack: LiveStack) -> None:
    service = unique("ndjson")
    good = [{"message": "a", "level": "error", "attributes": {"n": 1}}, {"message": "b"}]
    out = ok("send", "-", "--ndjson", "--url", stack.url, "-s", service,
             stdin="".join(json.dumps(g) + "\n" for g in good))  # fmt: skip
    assert out.strip() == "sent 2 entries in 1 batch(es)"
    bad = '{"message": "c"}\n{"message": "d", "colour": "red"}\n'
    result = aygolog("send", "--ndjson", "--url", stack.url, "-s", service, stdin=bad)
    assert result.returncode == 1
    assert result.stderr.strip() == "aygolog send: line 2: colour: not a field of a log entry"
    too_long = "ok\n" + "x" * 70_000 + "\n"  # refused by the server, not by the CLI
    result = aygolog("send", "--url", stack.url, "-s", service, stdin=too_long)
    assert result.returncode == 1
    assert result.stderr.startswith("aygolog send: line 2: message:"), result.stderr
    with LogClient(stack.url) as client:
        stored = client.query(service=service).items
    assert sorted(e.message for e in stored) == ["a", "b"]  # nothing of the refused inputs
    assert next(e for e in stored if e.message == "a").attributes == {"n": 1}


def test_a_server_refusal_is_a_user_error_with_the_field(stack: LiveStack) -> None:
    result = aygolog("send", "", "--url", stack.url)
    assert result.returncode == 1
    assert result.stderr.strip() == "aygolog send: message: must not be empty"


def test_query_formats(stack: LiveStack) -> None:
    service = unique("fmt")
    with LogClient(stack.url, service=service) as client:
        client.log("first", level="info")
        client.log("second, longer", level="warning", region="eu")
        client.log("third", level="error")
    table = ok("query", "--url", stack.url, "-s", service).splitlines()
    assert table[0].split() == ["TIME", "LEVEL", "SERVICE", "INSTANCE", "MESSAGE"]
    assert [line.split()[1] for line in table[1:]] == ["error", "warning", "info"]
    assert table[2].endswith("second, longer region=eu")
    for column in ("LEVEL", "SERVICE", "INSTANCE", "MESSAGE"):  # aligned
        start = table[0].index(column)
        assert all(line[start - 2 : start] == "  " and line[start] != " " for line in table[1:])
    page = json.loads(ok("query", "--url", stack.url, "-s", service, "--format", "json"))
    assert [e["message"] for e in page["items"]] == ["third", "second, longer", "first"]
    assert page["next_cursor"] is None
    ndjson = ok("query", "--url", stack.url, "-s", service, "-m", "warning", "--forward",
                "--format", "ndjson")  # fmt: skip
    assert [json.loads(line)["message"] for line in ndjson.splitlines()] == [
        "second, longer",
        "third",
    ]
    filtered = ok("query", "--url", stack.url, "-s", service, "-q", "LONGER", "-a", "region:eu",
                  "--since", "10m", "--format", "ndjson")  # fmt: skip
    assert len(filtered.splitlines()) == 1
    paged = aygolog("query", "--url", stack.url, "-s", service, "--limit", "2")
    assert paged.returncode == 0
    assert len(paged.stdout.splitlines()) == 3  # header + 2
    assert "--cursor" in paged.stderr
    empty = aygolog("query", "--url", stack.url, "-s", unique("none"))
    assert (empty.returncode, empty.stdout, empty.stderr.strip()) == (0, "", "no matching entries")


def _read_line(process: subprocess.Popen[str], timeout: float) -> str | None:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    return process.stdout.readline() if ready else None


def test_tail_prints_a_log_sent_meanwhile_then_stops_on_ctrl_c(stack: LiveStack) -> None:
    service = unique("tail")
    tail = subprocess.Popen(
        [sys.executable, "-m", "aygolog", "tail", "--url", stack.url, "-s", service,
         "-m", "warning", "--color", "always"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = None
        with LogClient(stack.url, service=service) as client:
            deadline = time.monotonic() + 30
            while line is None and time.monotonic() < deadline:
                client.log("filtered out", level="info")
                client.log("disk almost full", level="warning", percent=91)
                line = _read_line(tail, 0.5)  # until the tail has subscribed, logs pass it by
        assert line is not None, "the tail printed nothing"
        assert "\033[33mWARNING" in line  # coloured by level
        plain = re.sub(r"\033\[[0-9;]*m", "", line)
        assert f"WARNING  {service} api-" in plain
        assert plain.rstrip().endswith(": disk almost full percent=91")
        tail.send_signal(signal.SIGINT)
        assert tail.wait(10) == 0
        assert tail.stderr is not None
        assert "Traceback" not in tail.stderr.read()
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
        for stream in (tail.stdout, tail.stderr):
            if stream is not None:
                stream.close()


def _tail_process(*args: str, stderr: int = subprocess.DEVNULL) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "aygolog", "tail", *args],
        stdout=subprocess.PIPE, stderr=stderr, text=True,
    )  # fmt: skip


def _until_it_prints(tail: subprocess.Popen[str], url: str, service: str) -> str:
    """Send logs of `service` until `tail` prints one: then it has started, installed its signal
    handlers and subscribed. (A fixed sleep is a race: on a busy machine the interpreter may
    still be importing when the signal arrives, and the default action kills it.)"""
    with LogClient(url, service=service) as client:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and tail.poll() is None:
            client.log("tick")
            line = _read_line(tail, 0.3)
            if line:
                return line
    raise AssertionError(f"the tail printed nothing (exit code {tail.poll()})")


def test_tail_count_and_sigterm(stack: LiveStack) -> None:
    service = unique("tailn")
    with _tail_process("--url", stack.url, "-s", service, "--format", "ndjson", "-n", "2") as tail:
        try:
            first = _until_it_prints(tail, stack.url, service)
            with LogClient(stack.url, service=service) as client:
                client.log("tick")
            assert tail.wait(30) == 0  # stopped by itself after two entries
            assert tail.stdout is not None
            entries = [json.loads(line) for line in [first, *tail.stdout.read().splitlines()]]
            assert [e["message"] for e in entries] == ["tick", "tick"]
        finally:
            if tail.poll() is None:
                tail.kill()
    # SIGTERM ends a running tail with exit 0 and nothing on stderr.
    service = unique("tailterm")
    with _tail_process("--url", stack.url, "-s", service, stderr=subprocess.PIPE) as follower:
        try:
            _until_it_prints(follower, stack.url, service)
            follower.terminate()
            assert follower.wait(30) == 0
            assert follower.stderr is not None
            assert follower.stderr.read() == ""
        finally:
            if follower.poll() is None:
                follower.kill()


def test_services_lists_the_three_instances(stack: LiveStack) -> None:
    table = ok("services", "--url", stack.url).splitlines()
    assert table[0].split() == [
        "NAME", "URL", "STATUS", "HEARTBEAT", "IN-FLIGHT", "SERVED", "WEIGHT",
    ]  # fmt: skip
    rows = [line.split() for line in table[1:]]
    assert [r[0] for r in rows] == ["api-0", "api-1", "api-2"]
    assert {r[2] for r in rows} == {"healthy"}
    assert all(r[3].endswith("s") and r[4] == "ago" for r in rows)
    views = json.loads(ok("services", "--url", stack.url, "--format", "json"))
    assert sorted(v["name"] for v in views) == ["api-0", "api-1", "api-2"]
    assert all({"in_flight", "served", "weight", "heartbeat_age"} <= set(v) for v in views)
    # An instance is not the load balancer: it has no list, and the message says so.
    instance = aygolog("services", "--url", stack.instances[0].url)
    assert instance.returncode == 1
    assert "is --url the load balancer?" in instance.stderr


def test_version() -> None:
    from aygolog import __version__

    assert ok("version").strip() == __version__
