"""The search's time budget: Ray's stopper, leaving a mark when the budget (not an interruption) ends the search."""

from __future__ import annotations

from pathlib import Path

from ray.tune.stopper import TimeoutStopper


class TimeBudget(TimeoutStopper):
    """Ray's ``time_budget_s`` stopper, which also leaves ``mark`` when the budget ends the search.

    Tune marks every trial it stops as terminated, whether the budget or an interruption stopped it; only the mark
    tells a search that is over (its budget is spent, so ``--resume`` would train nothing) from one to resume.
    """

    def __init__(self, seconds: float, mark: Path, from_first_report: bool = False) -> None:
        super().__init__(seconds)
        self.mark = mark
        # The clock starts at the first check after a trial's first report (``debug.time_budget_from_first_report``).
        self.waiting_for_report = from_first_report

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.waiting_for_report = False
        return super().__call__(trial_id, result)

    def stop_all(self) -> bool:
        if self.waiting_for_report or not super().stop_all():
            return False
        try:
            self.mark.touch()
        except OSError:  # the experiment folder moved since this search started: the search still stops
            pass
        return True
