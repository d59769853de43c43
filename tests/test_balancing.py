"""Load-balancing strategies: fairness, load-awareness and the rules every strategy keeps."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aygolog.balancing import (
    DEFAULT_STRATEGY,
    STRATEGIES,
    BalancerStrategy,
    LeastOutstanding,
    NoCandidatesError,
    PowerOfTwoChoices,
    Random,
    RoundRobin,
    WeightedRoundRobin,
    make_strategy,
)


@dataclass(frozen=True)
class Inst:
    name: str
    weight: int = 1


def insts(*names: str) -> list[Inst]:
    return [Inst(n) for n in names]


def fresh(name: str, seed: int = 0) -> BalancerStrategy:
    return make_strategy(name, rng=random.Random(seed))


def run(strategy: BalancerStrategy, candidates: Sequence[Inst], picks: int) -> Counter[str]:
    """Pick `picks` times, each request starting and finishing before the next."""
    counts: Counter[str] = Counter()
    for _ in range(picks):
        chosen = strategy.pick(candidates)
        strategy.start(chosen.name)
        strategy.finish(chosen.name)
        counts[chosen.name] += 1
    return counts


ALL_NAMES = sorted(STRATEGIES)


# --- round robin --------------------------------------------------------------------------------


def test_round_robin_is_exactly_even() -> None:
    counts = run(RoundRobin(), insts("a", "b", "c"), 30_000)
    assert counts == {"a": 10_000, "b": 10_000, "c": 10_000}


def test_round_robin_stays_exactly_even_after_the_candidate_set_changes() -> None:
    rr = RoundRobin()
    run(rr, insts("a", "b", "c"), 7)  # leave the cursor mid-rotation
    assert run(rr, insts("a", "b", "c", "d"), 40_000) == dict.fromkeys("abcd", 10_000)
    assert run(rr, insts("b", "d"), 20_000) == {"b": 10_000, "d": 10_000}


# --- weighted round robin -----------------------------------------------------------------------


def test_weighted_shares_follow_the_weights() -> None:
    candidates = [Inst("a", 5), Inst("b", 3), Inst("c", 2)]
    counts = run(WeightedRoundRobin(), candidates, 100_000)
    for inst in candidates:
        assert counts[inst.name] / 100_000 == pytest.approx(inst.weight / 10, abs=0.01)


def test_weighted_is_smooth_like_nginx() -> None:
    wrr = WeightedRoundRobin()
    candidates = [Inst("a", 5), Inst("b", 1), Inst("c", 1)]
    picks = [wrr.pick(candidates).name for _ in range(14)]
    assert picks == list("aabacaa") * 2


def test_weighted_never_picks_weight_zero_while_others_have_weight() -> None:
    candidates = [Inst("a", 2), Inst("drain", 0), Inst("b", 1), Inst("neg", -3)]
    counts = run(WeightedRoundRobin(), candidates, 3_000)
    assert counts == {"a": 2_000, "b": 1_000}


def test_weighted_with_all_weights_zero_is_round_robin() -> None:
    candidates = [Inst("a", 0), Inst("b", 0), Inst("c", 0)]
    assert run(WeightedRoundRobin(), candidates, 300) == dict.fromkeys("abc", 100)


def test_weighted_follows_a_changed_candidate_set() -> None:
    wrr = WeightedRoundRobin()
    run(wrr, [Inst("a", 5), Inst("b", 3), Inst("c", 2)], 13)
    counts = run(wrr, [Inst("a", 1), Inst("c", 3)], 40_000)
    assert counts["a"] / 40_000 == pytest.approx(0.25, abs=0.01)
    assert counts["c"] / 40_000 == pytest.approx(0.75, abs=0.01)


# --- power of two choices -----------------------------------------------------------------------


def test_p2c_avoids_an_instance_with_many_requests_in_flight() -> None:
    p2c = PowerOfTwoChoices(rng=random.Random(1))
    for _ in range(1_000):
        p2c.start("slow")
    counts = run(p2c, insts("a", "slow", "b"), 10_000)
    # Uniform picking would give "slow" a third; the load check keeps it under 10%.
    assert counts["slow"] < 1_000
    assert counts["a"] > 4_000
    assert counts["b"] > 4_000
    assert p2c.outstanding("slow") == 1_000


def test_p2c_with_two_candidates_never_picks_the_busier_one() -> None:
    p2c = PowerOfTwoChoices(rng=random.Random(2))
    p2c.start("busy")
    p2c.start("busy")
    p2c.start("idle")
    counts = run(p2c, insts("busy", "idle"), 1_000)
    assert counts == {"idle": 1_000}


def test_p2c_with_one_candidate_returns_it() -> None:
    p2c = PowerOfTwoChoices(rng=random.Random(3))
    only = Inst("only")
    p2c.start("only")
    assert p2c.pick([only]) is only


def test_p2c_spreads_equal_load_over_all_candidates() -> None:
    counts = run(PowerOfTwoChoices(rng=random.Random(4)), insts("a", "b", "c", "d"), 8_000)
    assert set(counts) == set("abcd")
    assert all(1_500 < c < 2_500 for c in counts.values())


# --- random -------------------------------------------------------------------------------------


def test_random_is_roughly_uniform_and_reproducible() -> None:
    candidates = insts("a", "b", "c", "d")
    counts = run(Random(rng=random.Random(5)), candidates, 8_000)
    assert all(1_800 < c < 2_200 for c in counts.values())
    assert run(Random(rng=random.Random(5)), candidates, 8_000) == counts


# --- least outstanding --------------------------------------------------------------------------


def test_least_outstanding_picks_the_minimum() -> None:
    lo = LeastOutstanding()
    for name, load in {"a": 3, "b": 1, "c": 2}.items():
        for _ in range(load):
            lo.start(name)
    candidates = insts("a", "b", "c")
    assert [lo.pick(candidates).name for _ in range(6)] == ["b"] * 6


def test_least_outstanding_spreads_equal_load_evenly() -> None:
    assert run(LeastOutstanding(), insts("a", "b", "c"), 3_000) == dict.fromkeys("abc", 1_000)


def test_least_outstanding_keeps_held_requests_balanced() -> None:
    lo = LeastOutstanding()
    candidates = insts("a", "b", "c")
    for _ in range(30):
        lo.start(lo.pick(candidates).name)  # never finished
    assert [lo.outstanding(n) for n in "abc"] == [10, 10, 10]
    lo.finish("b")
    assert lo.pick(candidates).name == "b"


# --- rules every strategy keeps -----------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_NAMES)
def test_pick_from_nothing_raises(name: str) -> None:
    with pytest.raises(NoCandidatesError, match="no healthy instance to pick from"):
        fresh(name).pick([])


def test_no_candidates_is_a_lookup_error() -> None:
    assert issubclass(NoCandidatesError, LookupError)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_one_candidate_is_always_picked(name: str) -> None:
    strategy = fresh(name)
    only = Inst("only", weight=3)
    assert all(strategy.pick((only,)) is only for _ in range(20))


@pytest.mark.parametrize("name", ALL_NAMES)
def test_pick_does_not_mutate_candidates(name: str) -> None:
    strategy = fresh(name)
    candidates = [Inst("a", 3), Inst("b", 1), Inst("c", 2)]
    before = list(candidates)
    strategy.start("a")
    run(strategy, candidates, 50)
    assert candidates == before


@pytest.mark.parametrize("name", ALL_NAMES)
def test_accounting(name: str) -> None:
    strategy = fresh(name)
    assert (strategy.outstanding("a"), strategy.served("a")) == (0, 0)
    strategy.start("a")
    strategy.start("a")
    strategy.finish("a")
    assert (strategy.outstanding("a"), strategy.served("a")) == (1, 2)
    strategy.finish("a")
    strategy.finish("a")  # one finish too many
    assert (strategy.outstanding("a"), strategy.served("a")) == (0, 2)
    strategy.finish("never-started")
    assert strategy.outstanding("never-started") == 0


@pytest.mark.parametrize("name", ALL_NAMES)
def test_forget_then_late_finish_does_not_go_negative(name: str) -> None:
    strategy = fresh(name)
    strategy.start("gone")
    strategy.start("gone")
    strategy.forget("gone")
    assert (strategy.outstanding("gone"), strategy.served("gone")) == (0, 0)
    strategy.finish("gone")
    strategy.finish("gone")
    assert strategy.outstanding("gone") == 0
    strategy.start("gone")  # it came back
    assert (strategy.outstanding("gone"), strategy.served("gone")) == (1, 1)


names = st.lists(
    st.text(alphabet="abcdefgh", min_size=1, max_size=3), min_size=1, max_size=8, unique=True
)
candidate_lists = names.flatmap(
    lambda ns: st.tuples(*[st.builds(Inst, st.just(n), st.integers(1, 10)) for n in ns]).map(list)
)
operations = st.lists(
    st.tuples(
        st.sampled_from(["pick", "start", "finish", "forget"]),
        st.integers(0, 7),  # which candidate (start/finish/forget) or how many to offer (pick)
    ),
    max_size=60,
)


@pytest.mark.parametrize("name", ALL_NAMES)
@given(candidates=candidate_lists, ops=operations, seed=st.integers(0, 2**32))
def test_any_operations_keep_picks_in_candidates_and_counts_sane(
    name: str, candidates: list[Inst], ops: list[tuple[str, int]], seed: int
) -> None:
    strategy = fresh(name, seed)
    model_outstanding: Counter[str] = Counter()
    model_served: Counter[str] = Counter()
    for op, k in ops:
        target = candidates[k % len(candidates)].name
        if op == "pick":
            offered = candidates[: k % len(candidates) + 1]  # the candidate set changes
            snapshot = list(offered)
            chosen = strategy.pick(offered)
            assert any(chosen is c for c in offered)
            assert offered == snapshot
        elif op == "start":
            strategy.start(target)
            model_outstanding[target] += 1
            model_served[target] += 1
        elif op == "finish":
            strategy.finish(target)
            model_outstanding[target] = max(0, model_outstanding[target] - 1)
        else:
            strategy.forget(target)
            del model_outstanding[target], model_served[target]
        for c in candidates:
            assert strategy.outstanding(c.name) == model_outstanding[c.name] >= 0
            assert strategy.served(c.name) == model_served[c.name]


# --- make_strategy ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_NAMES)
def test_make_strategy_by_canonical_name(name: str) -> None:
    strategy = make_strategy(name)
    assert type(strategy) is STRATEGIES[name]
    assert strategy.name == name


def test_strategy_names() -> None:
    assert set(STRATEGIES) == {"round_robin", "random", "least_outstanding", "p2c", "weighted"}
    assert DEFAULT_STRATEGY == "p2c"
    assert isinstance(make_strategy(), PowerOfTwoChoices)


@pytest.mark.parametrize(
    ("alias", "cls"),
    [
        ("power_of_two_choices", PowerOfTwoChoices),
        ("weighted_round_robin", WeightedRoundRobin),
        ("Round-Robin", RoundRobin),
        (" P2C ", PowerOfTwoChoices),
    ],
)
def test_make_strategy_aliases_and_spellings(alias: str, cls: type[BalancerStrategy]) -> None:
    assert type(make_strategy(alias)) is cls


def test_make_strategy_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown balancing strategy 'fastest'") as info:
        make_strategy("fastest")
    for valid in [*STRATEGIES, "power_of_two_choices", "weighted_round_robin"]:
        assert valid in str(info.value)


def test_make_strategy_passes_rng_to_randomised_strategies() -> None:
    candidates = insts("a", "b", "c", "d", "e")
    for name in ("random", "p2c"):
        a = make_strategy(name, rng=random.Random(7))
        b = make_strategy(name, rng=random.Random(7))
        assert [a.pick(candidates) for _ in range(50)] == [b.pick(candidates) for _ in range(50)]
