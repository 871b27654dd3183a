"""How a search's ASHA is configured and how it differs from Ray's (Ray 2.60 behaviour noted where it is changed).

One bracket, time in epochs: a trial runs at least --grace-period epochs and at most --max-epochs; at
each rung ASHA keeps the best 1/--reduction-factor (the defaults per dataset are in tuning/sweep/plan.py,
the flags in tuning/sweep/experiment.py). Metric and mode come from the TuneConfig (tuning/sweep/tuner.py).

- ASHA compares with nanpercentile, and `nan < cutoff` is False: a NaN trial would never be stopped.
  Here a non-finite value counts as METRIC_FLOOR at the rungs.
- Ray does not save ASHA's rungs in the experiment state: a resumed search compared resumed trials
  against nothing. `replay` records a trial's past results in the rungs, as ASHA saw them.
"""

from __future__ import annotations

from types import SimpleNamespace

from ray.tune.schedulers import ASHAScheduler

from tuning.engine import ray_private
from tuning.run_stats import finite
from tuning.sweep.plan import Plan

METRIC_FLOOR = -1.0  # every selection metric is a correlation in [-1, 1]; undefined ranks below all


def make_scheduler(plan: Plan) -> ResumableASHA:
    return ResumableASHA(time_attr="epoch", max_t=plan.max_epochs, grace_period=plan.grace_period,
                         reduction_factor=plan.reduction_factor)  # metric and mode come from TuneConfig


class ResumableASHA(ASHAScheduler):
    """ASHA (one bracket) that ranks undefined values last and can be refilled after a resume."""

    def __init__(self, **kwargs):
        super().__init__(brackets=1, **kwargs)

    def _scored(self, result: dict) -> dict:
        if self.metric in result and not finite(result[self.metric]):
            return {**result, self.metric: METRIC_FLOOR}
        return result

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return super().on_trial_result(tune_controller, trial, self._scored(result))

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, self._scored(result))

    def replay(self, trial_id: str, curve: list[tuple[int, float]]) -> None:
        """Record `curve` ((epoch, metric) in epoch order) in the rungs exactly as live results would be."""
        stand_in = SimpleNamespace(trial_id=trial_id)
        # Tune gives the scheduler its metric and mode when the run starts; searches here always maximise.
        op = ray_private.asha_metric_op(self)
        op = 1.0 if op is None else op
        for epoch, value in curve:
            ray_private.asha_record(self, stand_in, epoch, op * (value if finite(value) else METRIC_FLOOR))

    def rungs(self) -> dict[int, dict[str, float]]:
        """{milestone epoch: {trial_id: recorded value}}, for tests and the debug log."""
        return {int(milestone): dict(recorded) for milestone, recorded in ray_private.asha_rungs(self)}
