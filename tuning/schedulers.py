"""ASHA and Optuna as a HyperIQA search needs them (Ray 2.60 behaviour noted where it is changed).

- Ray's OptunaSearch tells Optuna a trial's LAST value. A trial stopped for decline ends `patience`
  epochs after its peak, so the searcher would learn a worse value than the export ranks it by; a
  diverged trial ends on NaN, which Optuna 5 refuses (the Optuna trial then stays RUNNING). Here the
  searcher learns each trial's best finite value; a trial with none, or one that diverged, is PRUNED;
  one that could not start (tuning.trainable.FAILED) or errored is FAIL. Per-epoch values become
  Optuna intermediate values at step = epoch.
- With an RDB storage (--optuna-storage) the study lives in the database, and the searcher state Ray
  pickles with the experiment holds only a connection to it. That pickle can lag the database by the
  last seconds before a driver died: a trial told there but not in the pickle (telling it again
  raises), or a trial asked there whose Ray trial was never recorded (it would stay RUNNING for good).
  `restore` reconciles both. Each Optuna trial carries its Ray trial id (user attr `ray_trial_id`).
- ASHA compares with nanpercentile, and `nan < cutoff` is False: a NaN trial would never be stopped.
  Here a non-finite value counts as METRIC_FLOOR at the rungs.
- Ray does not save ASHA's rungs in the experiment state: a resumed search compared resumed trials
  against nothing. `replay` records a trial's past results in the rungs, as ASHA saw them.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from tuning.report import finite
from tuning.trainable import FAILED

METRIC_FLOOR = -1.0  # every selection metric is a correlation in [-1, 1]; undefined ranks below all


class BestValueOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna each trial's best finite value (see the module docstring)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._best: dict[str, float] = {}
        self._steps: dict[str, set[int]] = {}
        self._diverged: set[str] = set()

    def _setup_study(self, mode) -> None:
        import warnings

        import optuna

        super()._setup_study(mode)
        with warnings.catch_warnings():  # experimental since optuna 3.2, still so in 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._ot_study.set_metric_names([self._metric])  # optuna-dashboard labels the objective with it

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:  # which Ray trial this is, for optuna-dashboard and the tests
            self._ot_trials[trial_id].set_user_attr("ray_trial_id", trial_id)
        return config

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        if self._storage is not None:
            self._reconcile_with_storage()

    def _reconcile_with_storage(self) -> None:
        import optuna

        stored = {t.number: t for t in self._ot_study.get_trials(deepcopy=False)}
        known = {trial_id: ot.number for trial_id, ot in self._ot_trials.items()}
        for trial_id, number in known.items():
            if stored[number].state.is_finished():  # told after the pickle was written: its value stands
                self._completed_trials.add(trial_id)
        for number, trial in stored.items():
            if trial.state == optuna.trial.TrialState.RUNNING and number not in known.values():
                self._ot_study.tell(number, state=optuna.trial.TrialState.FAIL)  # asked, never run

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        value, epoch = result.get(self.metric), result.get("epoch")
        if result.get("status") == "diverged":
            self._diverged.add(trial_id)
        if not finite(value):
            return
        self._best[trial_id] = max(value, self._best.get(trial_id, -math.inf))
        steps = self._steps.setdefault(trial_id, set())
        if finite(epoch) and int(epoch) not in steps:  # a resumed trial may report an epoch again
            steps.add(int(epoch))
            self._ot_trials[trial_id].report(float(value), int(epoch))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        import optuna

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if result:
            self.on_trial_result(trial_id, result)
        best = self._best.pop(trial_id, None)
        self._steps.pop(trial_id, None)
        State = optuna.trial.TrialState
        if error or (result or {}).get("status") == FAILED:
            state, value = State.FAIL, None
        elif best is None or trial_id in self._diverged:
            state, value = State.PRUNED, None
        else:
            state, value = State.COMPLETE, best
        self._diverged.discard(trial_id)
        self._ot_study.tell(self._ot_trials[trial_id], value, state=state)
        self._completed_trials.add(trial_id)


class ResumableASHA(ASHAScheduler):
    """ASHA (one bracket) that ranks undefined values last and can be refilled after a resume."""

    def __init__(self, **kwargs):
        super().__init__(brackets=1, **kwargs)

    def _scored(self, result: dict) -> dict:
        if self._metric in result and not finite(result[self._metric]):
            return {**result, self._metric: METRIC_FLOOR}
        return result

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return super().on_trial_result(tune_controller, trial, self._scored(result))

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, self._scored(result))

    def replay(self, trial_id: str, curve: list[tuple[int, float]]) -> None:
        """Record `curve` ((epoch, metric) in epoch order) in the rungs exactly as live results would be."""
        stand_in = SimpleNamespace(trial_id=trial_id)
        bracket = self._brackets[0]
        # Tune gives the scheduler its metric and mode when the run starts; searches here always maximise.
        op = self._metric_op if self._metric_op is not None else 1.0
        for epoch, value in curve:
            bracket.on_result(stand_in, epoch, op * (value if finite(value) else METRIC_FLOOR))

    def rungs(self) -> dict[int, dict[str, float]]:
        """{milestone epoch: {trial_id: recorded value}}, for tests and the debug log."""
        return {int(milestone): dict(recorded) for milestone, recorded in self._brackets[0]._rungs}
