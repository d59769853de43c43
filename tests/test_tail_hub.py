"""The live-tail hub: reads only while someone listens, isolates slow subscribers."""

from __future__ import annotations

import asyncio

from aygolog.models import LogLevel, LogQuery, NewLog
from aygolog.server.tail import END, Dropped, TailHub
from aygolog.store import InMemoryLogStore


async def test_reader_runs_only_while_subscribed() -> None:
    store = InMemoryLogStore()
    hub = TailHub(store)
    assert not hub.connected.is_set()
    first = await hub.subscribe()
    second = await hub.subscribe()
    assert hub.connected.is_set()
    first.close()
    assert hub.connected.is_set()
    second.close()
    assert not hub.connected.is_set()
    assert hub.subscribers == 0
    await hub.stop()


async def test_filters_and_drop_counts() -> None:
    store = InMemoryLogStore()
    drops: list[int] = []
    hub = TailHub(store, queue_size=4, on_drop=drops.append)
    errors_only = await hub.subscribe(LogQuery(min_level=LogLevel.ERROR))
    everything = await hub.subscribe()
    for i in range(6):
        level = LogLevel.ERROR if i == 5 else LogLevel.INFO
        await store.append(NewLog(message=f"m{i}", level=level))
    await asyncio.sleep(0.05)
    got = [await everything.get(0.1) for _ in range(5)]
    assert [getattr(g, "message", None) for g in got[:4]] == ["m0", "m1", "m2", "m3"]
    assert isinstance(got[4], Dropped)
    assert got[4].count == 2
    assert sum(drops) == 2
    # Once there is room again, the marker is queued in its place, before newer entries.
    await store.append(NewLog(message="m6"))
    await asyncio.sleep(0.05)
    assert getattr(await everything.get(0.1), "message", None) == "m6"
    only = await errors_only.get(0.1)
    assert getattr(only, "message", None) == "m5"
    assert await errors_only.get(0.05) is None
    await hub.stop()


async def test_drain_ends_open_and_later_streams() -> None:
    store = InMemoryLogStore()
    hub = TailHub(store)
    open_one = await hub.subscribe()
    waiting = asyncio.create_task(open_one.get(5))
    await asyncio.sleep(0.01)
    hub.drain()
    assert await asyncio.wait_for(waiting, 1) is END
    assert await open_one.get(5) is END
    later = await hub.subscribe()
    assert await asyncio.wait_for(later.get(5), 1) is END
    await hub.stop()


async def test_thousands_of_waiting_subscribers_cost_no_task_each() -> None:
    """A subscriber waiting with a timeout holds one future and one timer, not a task of its
    own (`asyncio.wait_for` made one per read: at each entry, thousands of tasks were made)."""
    store = InMemoryLogStore()
    hub = TailHub(store)
    subscriptions = [await hub.subscribe() for _ in range(1000)]
    before = len(asyncio.all_tasks())
    readers = [asyncio.create_task(s.get(5)) for s in subscriptions]
    await asyncio.sleep(0.01)
    assert len(asyncio.all_tasks()) == before + len(readers)
    await store.append(NewLog(message="to all"))
    got = await asyncio.wait_for(asyncio.gather(*readers), 5)
    assert {getattr(g, "message", None) for g in got} == {"to all"}
    assert [await s.get(0.01) for s in subscriptions[:3]] == [None] * 3  # timeouts still work
    await hub.stop()


async def test_an_unfiltered_subscription_takes_every_entry_without_matching() -> None:
    store = InMemoryLogStore()
    hub = TailHub(store)
    plain = await hub.subscribe(LogQuery(limit=1000))  # the route's query with no filter
    errors = await hub.subscribe(LogQuery(min_level=LogLevel.ERROR))
    await store.append(NewLog(message="info"))
    await store.append(NewLog(message="bad", level=LogLevel.ERROR))
    assert getattr(await plain.get(1), "message", None) == "info"
    assert getattr(await plain.get(1), "message", None) == "bad"
    assert getattr(await errors.get(1), "message", None) == "bad"
    assert await errors.get(0.01) is None
    await hub.stop()


async def test_a_fan_out_to_thousands_lets_other_work_run_in_between() -> None:
    """Other ready work (a `/health`, the answer to the write) runs while an entry goes out to
    thousands of subscribers, not after all of them."""
    store = InMemoryLogStore()
    hub = TailHub(store)
    subscriptions = [await hub.subscribe() for _ in range(3000)]
    seen: list[int] = []

    async def probe() -> None:
        while len(seen) < 1000 and (not seen or seen[-1] < len(subscriptions)):
            seen.append(sum(1 for s in subscriptions if s.waiting))
            await asyncio.sleep(0)

    watching = asyncio.create_task(probe())
    await asyncio.sleep(0)
    await store.append(NewLog(message="to all"))
    await asyncio.wait_for(watching, 5)
    assert seen[-1] == len(subscriptions)
    assert any(0 < n < len(subscriptions) for n in seen), seen  # it ran part-way through
    await hub.stop()
