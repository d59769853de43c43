"""`Metrics.render(others)`: one scrape for several processes (the load balancer's workers)."""

from __future__ import annotations

import msgspec

from aygolog.metrics import Metrics


def _process(served: int, connections: int, healthy: int) -> Metrics:
    metrics = Metrics()
    requests = metrics.counter("req_total", "requests", ("status",))
    requests.inc("200", amount=served)
    metrics.counter("proxied_total", "by worker", ("worker",), read=lambda: {("w",): 1.0})
    metrics.gauge("conns", "connections", read=lambda: {(): float(connections)}, merge="sum")
    metrics.gauge("healthy", "healthy instances", read=lambda: {(): float(healthy)})
    latency = metrics.histogram("seconds", "latency", buckets=(0.1, 1.0))
    for _ in range(served):
        latency.observe(0.05)
    return metrics


def test_counters_histograms_and_summed_gauges_add_up_shared_gauges_do_not() -> None:
    mine, other = _process(3, 2, 4), _process(5, 7, 3)
    # The snapshot travels as msgpack between processes.
    wire = msgspec.msgpack.decode(msgspec.msgpack.encode(other.snapshot()))
    text = mine.render([wire])
    assert 'req_total{status="200"} 8\n' in text
    assert 'proxied_total{worker="w"} 2\n' in text
    assert "conns 9\n" in text
    assert "healthy 4\n" in text  # the answering process's own view, not 7
    assert 'seconds_bucket{le="0.1"} 8\n' in text
    assert "seconds_count 8\n" in text
    assert "seconds_sum 0.4" in text
    assert "healthy" not in other.snapshot()  # not sent at all


def test_alone_it_renders_its_own_values_and_ignores_foreign_buckets() -> None:
    mine = _process(3, 2, 4)
    assert mine.render() == mine.render([])
    odd = {"seconds": [[[], [1, 2, 3, 4, 5], 1.0]]}  # other buckets: not comparable
    assert "seconds_count 3\n" in mine.render([odd])
