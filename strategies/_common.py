"""Helpers the built-in strategies share: what was proposed (and drawing an unseen member), fixed orders."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import numpy as np

from procache_opt.schedule import Schedule
from procache_opt.space import ScheduleSpace
from procache_opt.strategy import Strategy

__all__ = ["ProposalHistory", "SequentialProposals", "SequentialStrategy"]


class ProposalHistory:
    """The patterns a strategy has proposed, in order, and its generator: together its resumable state.

    A strategy never proposes a schedule twice (the engine may ask again before telling, so "proposed", not
    "told", is what counts). The state is plain JSON (style guide item 7): the generator's
    ``bit_generator.state``, the proposed patterns and whether :meth:`draw_unseen` switched to listing.
    """

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self._patterns: dict[tuple[int, ...], None] = {}
        self._listing = False
        self._rest: list[Schedule] | None = None  # unseen members once listing; rebuilt after a restore

    def __len__(self) -> int:
        return len(self._patterns)

    def __contains__(self, schedule: Schedule) -> bool:
        return schedule.pattern in self._patterns

    def add(self, schedule: Schedule) -> bool:
        """Record ``schedule``; False (and nothing recorded) if it was proposed before."""
        if schedule in self:
            return False
        self._patterns[schedule.pattern] = None
        return True

    def draw_unseen(self, space: ScheduleSpace, attempts: int = 32) -> Schedule | None:
        """A member drawn uniformly from those not yet proposed; ``None`` once every member was proposed.

        Rejection sampling from :meth:`ScheduleSpace.sample` while unseen members are common. After
        ``attempts`` repeats in a row most members were proposed, so the space is about as small as the
        history: from then on the unseen members are listed once and drawn from the list. Both are uniform
        over the unseen members (sampling without replacement).
        """
        if not self._listing:
            for _ in range(attempts):
                schedule = space.sample(self.rng)
                if schedule not in self:
                    return schedule
            self._listing = True
        self._rest = [s for s in (space.enumerate() if self._rest is None else self._rest) if s not in self]
        return self._rest[int(self.rng.integers(len(self._rest)))] if self._rest else None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "proposed": [list(p) for p in self._patterns],
                "listing": self._listing}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self._patterns = {tuple(p): None for p in state["proposed"]}
        self._listing, self._rest = bool(state["listing"]), None


class SequentialProposals:
    """A fixed, deterministic sequence of proposals served in order; its state is the position reached.

    Args:
        make: Re-creates the sequence from its start (called again when the state is restored).
        size: Length of the sequence.
    """

    def __init__(self, make: Callable[[], Iterator[Schedule]], size: int) -> None:
        self._make, self.size = make, size
        self.position = 0
        self._iterator = make()

    @property
    def finished(self) -> bool:
        return self.position >= self.size

    def take(self, n: int) -> list[Schedule]:
        out = list(islice(self._iterator, max(n, 0)))
        self.position += len(out)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])
        self._iterator = islice(self._make(), self.position, None)


class SequentialStrategy(Strategy):
    """A strategy that serves a fixed sequence of proposals in order, ignoring what it is told.

    Subclasses build ``self._sequence`` in ``__init__``; asking, finishing and resuming follow from it.
    """

    _sequence: SequentialProposals

    def ask(self, n: int = 1) -> list[Schedule]:
        return self._sequence.take(n)

    @property
    def is_finished(self) -> bool:
        return self._sequence.finished

    def state_dict(self) -> dict[str, Any]:
        return self._sequence.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sequence.load_state_dict(state)
