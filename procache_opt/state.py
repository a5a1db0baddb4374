"""``SearchState``: everything a search needs to continue exactly where it stopped, as one JSON value.

A learning strategy's proposals depend on what it was told *and in which order*, and with several evaluations
in flight the order is the order results arrived, not the order they were proposed (Ray). Re-asking a rebuilt
strategy therefore cannot reproduce a search; restoring it can. The engine writes this value atomically after
every result is recorded and again after every ``tell`` (style guide, items 3, 7 and 18), and a resumed search
restores it: the strategy is told ``trials[:told]`` (what its state was saved after), its ``state_dict`` is
loaded, it is told the rest, and the evaluations that were running are submitted again under their ids.

Example:
    >>> from procache_opt.schedule import Schedule
    >>> state = SearchState(in_flight=((0, Schedule.from_pattern([1, 0, 1])),), next_trial_id=1)
    >>> SearchState.from_dict(state.to_dict()) == state
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from procache_opt.schedule import Schedule
from procache_opt.strategy import TrialResult

__all__ = ["SearchState", "STATE_FORMAT"]

#: Bumped whenever the meaning of a stored state changes; an unknown format is refused, never guessed.
STATE_FORMAT = 1


@dataclass(frozen=True)
class SearchState:
    """A search between two steps of its loop.

    Attributes:
        trials: Every finished trial, in the order the results were recorded (the order the strategy heard them).
        told: How many of ``trials``, from the start, the strategy had been told when ``strategy`` was saved.
        strategy: The strategy's ``state_dict()`` after hearing ``trials[:told]``.
        in_flight: ``(trial_id, schedule)`` of every evaluation submitted and not finished, in submission order.
        next_trial_id: The id the next submission gets (ids are never reused).
    """

    trials: tuple[TrialResult, ...] = ()
    told: int = 0
    strategy: Mapping[str, Any] = field(default_factory=dict)
    in_flight: tuple[tuple[int, Schedule], ...] = ()
    next_trial_id: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.told <= len(self.trials):
            raise ValueError(f"told={self.told} must be between 0 and the {len(self.trials)} stored trials")
        ids = [t.trial_id for t in self.trials] + [i for i, _ in self.in_flight]
        if len(set(ids)) != len(ids) or any(i >= self.next_trial_id for i in ids):
            raise ValueError(f"trial ids {sorted(ids)} repeat or reach next_trial_id={self.next_trial_id}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "trials": [t.to_dict() for t in self.trials],
            "told": self.told,
            "strategy": dict(self.strategy),
            "in_flight": [[i, s.to_dict()] for i, s in self.in_flight],
            "next_trial_id": self.next_trial_id,
        }

    @classmethod
    def from_dict(cls, data: Any) -> SearchState:
        """Read :meth:`to_dict`'s output; anything else raises ``ValueError`` saying what is wrong."""
        if not isinstance(data, Mapping) or data.get("format") != STATE_FORMAT:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"not a search state of format {STATE_FORMAT} (found {found!r})")
        try:
            return cls(
                trials=tuple(TrialResult.from_dict(t) for t in data["trials"]),
                told=_int(data["told"]),
                strategy=dict(data["strategy"]),
                in_flight=tuple((_int(i), Schedule.from_dict(s)) for i, s in data["in_flight"]),
                next_trial_id=_int(data["next_trial_id"]),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"a search state with a missing or mistyped entry ({type(exc).__name__}: {exc})") from None


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value
