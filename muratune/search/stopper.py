"""The search's time budget: Ray's stopper, leaving a mark when the budget (not an interruption) ends the search."""

from __future__ import annotations

from pathlib import Path

from ray.tune.stopper import TimeoutStopper


class TimeBudget(TimeoutStopper):
    """Ray's ``time_budget_s`` stopper, which also leaves ``mark`` when the budget ends the search.

    Tune marks every trial it stops as terminated, whether the budget or an interruption stopped it; only the mark
    tells a search that is over (its budget is spent, so ``--resume`` would train nothing) from one to resume.
    """

    def __init__(self, seconds: float, mark: Path) -> None:
        super().__init__(seconds)
        self.mark = mark

    def stop_all(self) -> bool:
        if not super().stop_all():
            return False
        try:
            self.mark.touch()
        except OSError:  # the experiment folder moved since this search started: the search still stops
            pass
        return True
