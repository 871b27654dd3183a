"""Optuna as a HyperIQA search needs it (Ray 2.60 behaviour noted where it is changed): the searcher and its sampler.

- Ray's OptunaSearch tells Optuna a trial's LAST value. A trial stopped for decline ends `patience`
  epochs after its peak, so the searcher would learn a worse value than the export ranks it by; a
  diverged trial ends on NaN, which Optuna 5 refuses (the Optuna trial then stays RUNNING). Here the
  searcher learns each trial's best finite value; a trial with none, or one that diverged, is PRUNED;
  one that could not start (tuning.engine.trainable.FAILED) or errored is FAIL. Per-epoch values become
  Optuna intermediate values at step = epoch.
- With an RDB storage (--optuna-storage) the study lives in the database, and the searcher state Ray
  pickles with the experiment holds only a connection to it. That pickle can lag the database by the
  last seconds before a driver died: a trial told there but not in the pickle (telling it again
  raises), or a trial asked there whose Ray trial was never recorded (it would stay RUNNING for good).
  `restore` reconciles both. Each Optuna trial carries its Ray trial id (user attr `ray_trial_id`).
"""

from __future__ import annotations

import math

from ray.tune.search.optuna import OptunaSearch

from tuning.engine import ray_private
from tuning.engine.trainable import FAILED
from tuning.run_stats import finite
from tuning.sweep.plan import Plan


def make_searcher(plan: Plan) -> BestValueOptunaSearch:
    import optuna

    if plan.searcher == "random":
        sampler = optuna.samplers.RandomSampler(seed=plan.seed)
    else:  # TPE, after a few random trials (fewer than optuna's 10 so that small searches still use TPE)
        sampler = optuna.samplers.TPESampler(seed=plan.seed, n_startup_trials=min(10, max(3, plan.num_samples // 3)))
    space = plan.search_space
    # --optuna-storage: the study lives in that database under the experiment's name (optuna-dashboard
    # shows it while the search runs); otherwise in memory, pickled with the experiment's searcher state.
    storage = optuna.storages.RDBStorage(plan.optuna_storage) if plan.optuna_storage else None
    # Start points are enqueued in the study up front: those beyond --num-samples would never run and
    # would stay WAITING in a stored study.
    start = [dict(p) for p in space.start[:plan.num_samples]]
    return BestValueOptunaSearch(space=space, metric=plan.metric, mode="max", sampler=sampler,
                                 points_to_evaluate=start or None,
                                 storage=storage, study_name=plan.name if storage else None)


class BestValueOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna each trial's best finite value (see the module docstring)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._best: dict[str, float] = {}
        self._steps: dict[str, set[int]] = {}
        self._diverged: set[str] = set()

    def study_created(self) -> None:
        """Called once Ray's OptunaSearch has created or loaded the study (ray_private.after_study_setup)."""
        import warnings

        import optuna

        with warnings.catch_warnings():  # experimental since optuna 3.2, still so in 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            ray_private.optuna_study(self).set_metric_names([self.metric])  # optuna-dashboard labels the objective with it

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if trial_id in ray_private.optuna_trials(self):  # which Ray trial this is, for optuna-dashboard and the tests
            ray_private.optuna_trials(self)[trial_id].set_user_attr("ray_trial_id", trial_id)
        return config

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        if ray_private.optuna_storage(self) is not None:
            self._reconcile_with_storage()

    def _reconcile_with_storage(self) -> None:
        import optuna

        stored = {t.number: t for t in ray_private.optuna_study(self).get_trials(deepcopy=False)}
        known = {trial_id: ot.number for trial_id, ot in ray_private.optuna_trials(self).items()}
        for trial_id, number in known.items():
            if stored[number].state.is_finished():  # told after the pickle was written: its value stands
                ray_private.optuna_completed(self).add(trial_id)
        for number, trial in stored.items():
            if trial.state == optuna.trial.TrialState.RUNNING and number not in known.values():
                ray_private.optuna_study(self).tell(number, state=optuna.trial.TrialState.FAIL)  # asked, never run

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in ray_private.optuna_completed(self) or trial_id not in ray_private.optuna_trials(self):
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
            ray_private.optuna_trials(self)[trial_id].report(float(value), int(epoch))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        import optuna

        if trial_id in ray_private.optuna_completed(self) or trial_id not in ray_private.optuna_trials(self):
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
        ray_private.optuna_study(self).tell(ray_private.optuna_trials(self)[trial_id], value, state=state)
        ray_private.optuna_completed(self).add(trial_id)


# the study gets its metric name as soon as Ray has created it
ray_private.after_study_setup(BestValueOptunaSearch, BestValueOptunaSearch.study_created)
