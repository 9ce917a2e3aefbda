"""Automatic temperature (docs/recipe.md, "Dynamics and the automatic temperature").

Pass@K decays while self-evolving training runs (exploration collapses). M-STaR's fix: every ``adapt_every``
(2) iterations, set the sampling temperature T to the argmax, over the grid {0.3, 0.4, ..., 1.6}, of the
validation Reward-Pass@2 measured at each grid temperature. ``criterion="pass_at_k"`` chooses by Pass@K
instead (the paper's weaker alternative, 58.0 vs 59.5) and ``criterion="static"`` keeps T fixed (the
baseline; the paper's static runs use T = 1.0).

Iterations are counted from 1: ``iteration`` is the number of the iteration that has **just finished**
(its SFT steps done, its validation sampled). The loop calls, for each finished iteration ``i``::

    temps = controller.grid_to_sample(i)          # the whole grid when i is an adapt iteration
    report = monitor.validate(engine, val_prompts, k=K, temperatures=temps, scorer=prm)
    next_t = controller.update(i, report)         # changes T only when should_adapt(i)

so with ``adapt_every=2`` T changes after iterations 2, 4, 6, ... and the new T is used from the next
iteration on. Iteration 0 ("nothing trained yet") never adapts.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from mstar_fast.constants import PAPER_TEMPERATURE_GRID, TEMPERATURE_CRITERIA
from mstar_fast.constants import temperature_grid as default_grid

__all__ = ["CRITERIA", "DEFAULT_GRID", "TemperatureController", "criteria", "default_grid", "register_criterion"]

CRITERIA = TEMPERATURE_CRITERIA
DEFAULT_GRID = PAPER_TEMPERATURE_GRID


class _Report(Protocol):
    def metric(self, name: str) -> Mapping[float, float | None]: ...


#: ``criterion(report) -> {temperature: value}`` to maximise, or None for a criterion that never adapts.
Criterion = Callable[[_Report], Mapping[Any, Any] | None]
_CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str) -> Callable[[Criterion], Criterion]:
    """Register a temperature criterion under ``name`` (verl-style decorator).

    Raises:
        ValueError: ``name`` is already registered.
    """
    def deco(fn: Criterion) -> Criterion:
        if name in _CRITERIA:
            raise ValueError(f"register_criterion: {name!r} is already registered")
        _CRITERIA[name] = fn
        return fn

    return deco


def criteria() -> tuple[str, ...]:
    """The registered criterion names."""
    return tuple(_CRITERIA)


@register_criterion("reward_pass_at_2")
def _reward_pass_at_2(report: _Report) -> Mapping[Any, Any]:
    """M-STaR: validation Reward-Pass@2 at each grid temperature."""
    return report.metric("reward_pass_at_2")


@register_criterion("pass_at_k")
def _pass_at_k(report: _Report) -> Mapping[Any, Any]:
    """The paper's weaker alternative: validation Pass@K."""
    return report.metric("pass_at_k")


@register_criterion("static")
def _static(report: _Report) -> None:
    """Never adapt (the baseline)."""
    return None


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


class TemperatureController:
    """Chooses the sampling temperature of each self-evolving iteration.

    Args:
        grid: candidate temperatures (> 0, distinct); default 0.3 .. 1.6 step 0.1. Kept sorted ascending.
        initial: T until the first adaptation (> 0; need not lie on the grid).
        adapt_every: adapt after every ``adapt_every``-th finished iteration (int >= 1).
        criterion: ``"reward_pass_at_2"`` (M-STaR), ``"pass_at_k"`` or ``"static"`` (never adapt).
        last_iteration: the run's last iteration, after which no T is chosen (no iteration would sample at
            it, so its grid would be validation sampling thrown away); None: no last iteration.

    Raises:
        ValueError: an empty grid, a non-positive / non-finite / repeated grid value, a non-positive
            ``initial``, ``adapt_every`` < 1 or not an int, ``last_iteration`` < 0 or not an int, or an unknown
            criterion.
    """

    def __init__(self, grid: Sequence[float] = DEFAULT_GRID, initial: float = 1.0, adapt_every: int = 2,
                 criterion: str = "reward_pass_at_2", last_iteration: int | None = None) -> None:
        if criterion not in _CRITERIA:
            raise ValueError(f"TemperatureController: criterion must be one of {criteria()}, got {criterion!r}")
        if isinstance(adapt_every, bool) or not isinstance(adapt_every, int) or adapt_every < 1:
            raise ValueError(f"TemperatureController: adapt_every must be an int >= 1, got {adapt_every!r}")
        if not _is_real(initial) or initial <= 0:
            raise ValueError(f"TemperatureController: initial must be a finite temperature > 0, got {initial!r}")
        if last_iteration is not None and (isinstance(last_iteration, bool) or not isinstance(last_iteration, int)
                                           or last_iteration < 0):
            raise ValueError(f"TemperatureController: last_iteration must be an int >= 0 or None, got "
                             f"{last_iteration!r}")
        grid = list(grid)
        if not grid:
            raise ValueError("TemperatureController: grid is empty")
        for t in grid:
            if not _is_real(t) or t <= 0:
                raise ValueError(f"TemperatureController: grid temperatures must be finite and > 0 (0 is greedy, "
                                 f"which validation measures separately); got {t!r}")
        clean = sorted(float(t) for t in grid)
        dup = [a for a, b in zip(clean, clean[1:]) if a == b]
        if dup:
            raise ValueError(f"TemperatureController: grid repeats {dup[0]}")
        self.grid: tuple[float, ...] = tuple(clean)
        self.initial = float(initial)
        self.adapt_every = adapt_every
        self.criterion = criterion
        self.last_iteration = last_iteration
        self._temperature = self.initial
        #: one entry per adaptation: {"iteration", "previous", "temperature", "values": {str(T): metric}}
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ queries
    @property
    def temperature(self) -> float:
        """The temperature to sample the next training iteration at."""
        return self._temperature

    @staticmethod
    def _check_iteration(iteration: int) -> int:
        if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
            raise ValueError(f"TemperatureController: iteration must be an int >= 0, got {iteration!r}")
        return iteration

    def should_adapt(self, iteration: int) -> bool:
        """True when T is re-chosen after finished iteration ``iteration`` (1-based): every
        ``adapt_every``-th one; never for iteration 0, the ``last_iteration`` or the static criterion."""
        self._check_iteration(iteration)
        if self.last_iteration is not None and iteration >= self.last_iteration:
            return False
        return _CRITERIA[self.criterion] is not _static and iteration >= 1 and iteration % self.adapt_every == 0

    def grid_to_sample(self, iteration: int) -> list[float]:
        """Temperatures that need validation sampling after finished iteration ``iteration``: the grid
        (plus the current T when it lies off the grid, so the current T is always measured) on adapt
        iterations, else only the current T. Sorted ascending."""
        if not self.should_adapt(iteration):
            return [self._temperature]
        temps = set(self.grid)
        temps.add(self._temperature)
        return sorted(temps)

    # ------------------------------------------------------------------ adaptation
    def _values(self, report: _Report | Mapping[float | str, float | None]) -> dict[float, float]:
        """Criterion value per grid temperature from a ``ValidationReport`` (its ``metric(name)``) or a
        plain mapping ``temperature -> value``."""
        if hasattr(report, "metric"):
            raw = _CRITERIA[self.criterion](report) or {}
        elif isinstance(report, Mapping):
            raw = report
        else:
            raise ValueError(f"TemperatureController.update: report must be a ValidationReport or a mapping "
                             f"temperature -> {self.criterion}, got {type(report).__name__}")
        # Keys may come back from JSON as strings ("0.7") or carry float noise; match on 1e-6.
        by_t: dict[float, Any] = {}
        for key, v in raw.items():
            by_t[float(key)] = v
        out: dict[float, float] = {}
        for t in self.grid:
            match = [v for key, v in by_t.items() if abs(key - t) <= 1e-6]
            if not match:
                raise ValueError(f"TemperatureController.update: the report has no {self.criterion} at grid "
                                 f"temperature {t}; sample grid_to_sample(iteration) temperatures")
            v = match[0]
            if v is None:
                raise ValueError(f"TemperatureController.update: {self.criterion} at T={t} is None (validation "
                                 "ran without a PRM scorer?); pass a scorer or use criterion='pass_at_k'")
            if not _is_real(v):
                raise ValueError(f"TemperatureController.update: {self.criterion} at T={t} is {v!r}, not a "
                                 "finite number")
            out[t] = float(v)
        return out

    def choose(self, values: Mapping[float, float]) -> float:
        """The argmax temperature of ``values`` (one per grid temperature); among equal values the one
        closest to the current T, then the lower one."""
        cur = self._temperature
        # Smallest key wins: highest value, then smallest distance to cur, then lowest T.
        return min(values, key=lambda t: (-values[t], abs(t - cur), t))

    def update(self, iteration: int, report: _Report | Mapping[float | str, float | None]) -> float:
        """Adapt T after finished iteration ``iteration`` and return the T for the next iteration.

        Args:
            iteration: the iteration just finished (1-based).
            report: a :class:`~mstar_fast.recipe.monitor.ValidationReport` or a mapping
                ``temperature -> criterion value``; must cover every grid temperature on adapt iterations
                (ignored otherwise).

        Returns:
            The new T (argmax over the grid, see :meth:`choose`) when :meth:`should_adapt`, else the
            unchanged current T.

        Raises:
            ValueError: on an adapt iteration, a grid temperature missing from the report or whose value is
                None (no PRM scorer) or not finite.
        """
        if not self.should_adapt(iteration):
            return self._temperature
        values = self._values(report)
        new = self.choose(values)
        self.history.append({"iteration": iteration, "previous": self._temperature, "temperature": new,
                             "values": {str(t): v for t, v in values.items()}})
        self._temperature = new
        return new

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: the current T, the adaptation history and the settings it was made
        under (checked on load)."""
        return {"temperature": self._temperature, "initial": self.initial, "grid": list(self.grid),
                "adapt_every": self.adapt_every, "criterion": self.criterion,
                "history": [dict(h, values=dict(h["values"])) for h in self.history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output.

        Raises:
            ValueError: a missing key, or a checkpoint made with another grid, ``adapt_every`` or criterion
                (resuming under other settings would not reproduce the run).
        """
        missing = [k for k in ("temperature", "grid", "adapt_every", "criterion") if k not in state]
        if missing:
            raise ValueError(f"TemperatureController.load_state_dict: missing keys {missing}")
        mine = {"grid": list(self.grid), "adapt_every": self.adapt_every, "criterion": self.criterion}
        theirs = {"grid": [float(t) for t in state["grid"]], "adapt_every": state["adapt_every"],
                  "criterion": state["criterion"]}
        diff = [k for k in mine if mine[k] != theirs[k]]
        if diff:
            raise ValueError("TemperatureController.load_state_dict: the checkpoint was made with other settings: "
                             + ", ".join(f"{k}={theirs[k]!r} (now {mine[k]!r})" for k in diff))
        t = state["temperature"]
        if not _is_real(t) or t <= 0:
            raise ValueError(f"TemperatureController.load_state_dict: bad temperature {t!r}")
        self._temperature = float(t)
        self.history = [dict(h) for h in state.get("history", [])]

    def __repr__(self) -> str:
        return (f"TemperatureController(T={self._temperature}, criterion={self.criterion!r}, "
                f"adapt_every={self.adapt_every}, grid={self.grid[0]}..{self.grid[-1]} ({len(self.grid)}))")
