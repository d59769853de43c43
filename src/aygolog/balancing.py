"""Load-balancing strategies: pure, I/O-free rules for choosing the Log API instance for a request.

The load balancer asks a strategy to `pick` one of the currently healthy instances, then tells it
when a request to that instance starts and finishes, so strategies that look at load (least
outstanding, power of two choices) can see it. A strategy keeps its own small state keyed by
instance name, so the set of candidates may change from one call to the next; `forget` drops what
it knows of an instance that has left. Strategies are not thread-safe: the balancer uses each one
from a single event loop. Every randomised strategy takes an optional `random.Random` (`rng=`) so
tests and simulations are reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Protocol, TypeVar

from aygolog.errors import NoHealthyInstance

__all__ = [
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "Backend",
    "BalancerStrategy",
    "LeastOutstanding",
    "NoCandidatesError",
    "PowerOfTwoChoices",
    "Random",
    "RoundRobin",
    "WeightedRoundRobin",
    "make_strategy",
]


class Backend(Protocol):
    """What a strategy needs to know of an upstream instance."""

    @property
    def name(self) -> str:
        """The instance's unique name; strategies key their state by it."""
        ...

    @property
    def weight(self) -> int:
        """The instance's relative capacity; only `WeightedRoundRobin` reads it."""
        ...


B = TypeVar("B", bound=Backend)


class NoCandidatesError(NoHealthyInstance):
    """`pick` was given no candidates: there is no healthy instance to send the request to."""

    def __init__(self, message: str = "no healthy instance to pick from") -> None:
        super().__init__(message, retry_after=1.0)


class BalancerStrategy(Protocol):
    """A rule for choosing an instance, plus the per-instance load it has been told about."""

    name: str

    def pick(self, candidates: Sequence[B]) -> B:
        """Choose one of `candidates` (not mutated); raise `NoCandidatesError` if it is empty."""
        ...

    def start(self, name: str) -> None:
        """Record that a request was sent to the named instance."""
        ...

    def finish(self, name: str) -> None:
        """Record that a request to the named instance ended (any outcome)."""
        ...

    def outstanding(self, name: str) -> int:
        """How many requests to the named instance have started and not finished."""
        ...

    def served(self, name: str) -> int:
        """How many requests have been sent to the named instance."""
        ...

    def forget(self, name: str) -> None:
        """Drop all state of an instance that has left."""
        ...


class _Accounting:
    """The start/finish bookkeeping every strategy shares; subclasses implement `pick`.

    Counts are keyed by name. After `forget`, late `finish` calls for that name are ignored, so
    counts never go negative. If the same name comes back while old requests are still in flight,
    their finishes may briefly undercount the new instance's load; it corrects itself as the
    counts are floored at zero.
    """

    name: str

    def __init__(self) -> None:
        self._outstanding: dict[str, int] = {}
        self._served: dict[str, int] = {}

    def start(self, name: str) -> None:
        """Record that a request was sent to the named instance."""
        self._outstanding[name] = self._outstanding.get(name, 0) + 1
        self._served[name] = self._served.get(name, 0) + 1

    def finish(self, name: str) -> None:
        """Record that a request to the named instance ended; never goes below zero."""
        current = self._outstanding.get(name)
        if current:  # absent (forgotten or never started) or already 0: nothing to undo
            self._outstanding[name] = current - 1

    def outstanding(self, name: str) -> int:
        """How many requests to the named instance have started and not finished."""
        return self._outstanding.get(name, 0)

    def served(self, name: str) -> int:
        """How many requests have been sent to the named instance since it was last forgotten."""
        return self._served.get(name, 0)

    def forget(self, name: str) -> None:
        """Drop all state of an instance that has left."""
        self._outstanding.pop(name, None)
        self._served.pop(name, None)


class _Randomised(_Accounting):
    """Base of the strategies that draw random numbers; `rng` makes them reproducible."""

    def __init__(self, *, rng: random.Random | None = None) -> None:
        super().__init__()
        self._rng = rng if rng is not None else random.Random()


class RoundRobin(_Accounting):
    """Each candidate in turn: exactly even over any run of `len(candidates)` picks. O(1)."""

    name = "round_robin"

    def __init__(self) -> None:
        super().__init__()
        self._cursor = 0

    def pick(self, candidates: Sequence[B]) -> B:
        """Return the next candidate in rotation."""
        n = len(candidates)
        if n == 0:
            raise NoCandidatesError
        i = self._cursor % n
        self._cursor = i + 1
        return candidates[i]


class Random(_Randomised):
    """A uniformly random candidate. O(1)."""

    name = "random"

    def pick(self, candidates: Sequence[B]) -> B:
        """Return a candidate chosen uniformly at random."""
        if not candidates:
            raise NoCandidatesError
        return self._rng.choice(candidates)


class LeastOutstanding(_Accounting):
    """The candidate with the fewest requests in flight; ties go round-robin. O(n)."""

    name = "least_outstanding"

    def __init__(self) -> None:
        super().__init__()
        self._cursor = 0

    def pick(self, candidates: Sequence[B]) -> B:
        """Return the least-loaded candidate, scanning from a rotating start to break ties."""
        n = len(candidates)
        if n == 0:
            raise NoCandidatesError
        first = self._cursor % n
        self._cursor = first + 1
        best = candidates[first]
        best_load = self._outstanding.get(best.name, 0)
        for k in range(1, n):
            if best_load == 0:
                break  # nothing beats an idle instance
            candidate = candidates[(first + k) % n]
            load = self._outstanding.get(candidate.name, 0)
            if load < best_load:
                best, best_load = candidate, load
        return best


class PowerOfTwoChoices(_Randomised):
    """Of two distinct random candidates, the one with fewer requests in flight. O(1).

    The default strategy: nearly as good as least-outstanding at avoiding a slow instance, without
    every balancer herding onto the same least-loaded one.
    """

    name = "p2c"

    def pick(self, candidates: Sequence[B]) -> B:
        """Return the less-loaded of two distinct random candidates (the first drawn on a tie)."""
        n = len(candidates)
        if n == 0:
            raise NoCandidatesError
        if n == 1:
            return candidates[0]
        i = self._rng.randrange(n)
        j = self._rng.randrange(n - 1)
        if j >= i:
            j += 1  # distinct from i, still uniform over the others
        a, b = candidates[i], candidates[j]
        if self._outstanding.get(b.name, 0) < self._outstanding.get(a.name, 0):
            return b
        return a


class WeightedRoundRobin(_Accounting):
    """nginx's smooth weighted round robin: shares follow `weight`, picks are interleaved. O(n).

    Each pick adds every candidate's weight to its running score, picks the highest score (the
    earlier candidate on a tie) and subtracts the total weight from the winner. Weights 5, 1, 1
    give a, a, b, a, c, a, a rather than a burst of five a's.

    A weight of 0 or less means "send nothing here" (e.g. while draining): such a candidate is
    never picked while any candidate has a positive weight. If none has, all count as weight 1, so
    the result is plain round robin rather than an error. Scores are kept only for the candidates
    of the latest pick, so a candidate that leaves and comes back starts again from zero.
    """

    name = "weighted"

    def __init__(self) -> None:
        super().__init__()
        self._scores: dict[str, int] = {}

    def pick(self, candidates: Sequence[B]) -> B:
        """Return the candidate whose running score is highest, then lower its score."""
        if not candidates:
            raise NoCandidatesError
        any_positive = any(c.weight > 0 for c in candidates)
        scores: dict[str, int] = {}
        total = 0
        best: B | None = None
        best_score = 0
        for candidate in candidates:
            weight = candidate.weight if any_positive else 1
            if weight <= 0:
                continue
            score = self._scores.get(candidate.name, 0) + weight
            scores[candidate.name] = score
            total += weight
            if best is None or score > best_score:
                best, best_score = candidate, score
        assert best is not None  # at least one candidate has a positive (effective) weight
        scores[best.name] = best_score - total
        self._scores = scores
        return best

    def forget(self, name: str) -> None:
        """Drop all state of an instance that has left, its running score included."""
        super().forget(name)
        self._scores.pop(name, None)


DEFAULT_STRATEGY = PowerOfTwoChoices.name

STRATEGIES: Mapping[str, type[BalancerStrategy]] = MappingProxyType(
    {
        cls.name: cls
        for cls in (RoundRobin, Random, LeastOutstanding, PowerOfTwoChoices, WeightedRoundRobin)
    }
)
"""Every strategy by its canonical name."""

_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "power_of_two_choices": PowerOfTwoChoices.name,
        "weighted_round_robin": WeightedRoundRobin.name,
    }
)


def make_strategy(
    name: str = DEFAULT_STRATEGY, *, rng: random.Random | None = None
) -> BalancerStrategy:
    """Build a fresh strategy from its name (case and `-`/`_` do not matter).

    Args:
        name: a key of `STRATEGIES`, or an alias: "power_of_two_choices", "weighted_round_robin".
        rng: the random source for randomised strategies; ignored by the others.

    Raises:
        ValueError: the name is unknown; the message lists the valid names.
    """
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    cls = STRATEGIES.get(key)
    if cls is None:
        valid = ", ".join(sorted([*STRATEGIES, *_ALIASES]))
        raise ValueError(f"unknown balancing strategy {name!r}; valid names: {valid}")
    if issubclass(cls, _Randomised):
        return cls(rng=rng)
    return cls()
