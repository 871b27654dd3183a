"""The stall watchdog of every Ray Tune run (search, ablation, confirmation): a Tune callback.

Ray Tune has no per-trial hang timeout. StallWatch times each running trial's reports on the driver
(time.monotonic()); when one has reported nothing for longer than tuning/engine/stall.py's rule allows, it
prints one line (the trial, its node, how long it was silent), records the stall in the experiment's
stalls.json and kills the trial's actor with ray.kill: Ray marks the actor dead at once and its raylet
ends the worker process (SIGKILL after a short grace period, also for a SIGSTOPped process), which frees
its GPU. The trial's training call then fails like a trial on a lost node, so FailureConfig(max_failures)
restarts it from its last checkpoint; when no retry is left it ends in ERROR, and stalls.json lists it
under "stalled", which the trials report (tuning/sweep/trials_report.py) shows as `stalled`.
"""

from __future__ import annotations

import time

import ray
from ray import tune

from tuning.engine import ray_private, stall

CHECK_EVERY_S = 1.0  # on_step_begin comes about every 0.1 s; the rule is checked at most this often


class StallWatch(tune.Callback):
    def __init__(self, stall_timeout: float, out=print):
        self.stall_timeout = stall_timeout
        self.out = out
        self._watch = stall.Watch(stall_timeout)
        self._killed: set[str] = set()  # trials this callback killed whose failure Ray has not handled yet
        self._next_check = 0.0
        self._stalled: set[str] | None = None  # stalls.json's "stalled", read at the first start

    # The Tuner pickles its run config's callbacks (tuner.pkl): the setting only, no clocks, no printer
    def __getstate__(self):
        return {"stall_timeout": self.stall_timeout}

    def __setstate__(self, state):
        self.__init__(state["stall_timeout"])

    def on_trial_start(self, iteration, trials, trial, **info):
        self._watch.started(trial.trial_id, time.monotonic())
        if self._stalled is None:
            self._stalled = set(stall.load(*_folder(trial))["stalled"])
        if trial.trial_id in self._stalled:  # a --resume gave a trial that ended stalled another chance
            self._stalled.discard(trial.trial_id)
            stall.add(*_folder(trial), revived=trial.trial_id)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._watch.reported(trial.trial_id, time.monotonic())

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._watch.forget(trial.trial_id)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._watch.forget(trial.trial_id)
        self._killed.discard(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._watch.forget(trial.trial_id)
        if trial.trial_id in self._killed:  # the retries ran out on a stall: the trial ends stalled
            self._killed.discard(trial.trial_id)
            stall.add(*_folder(trial), ended=trial.trial_id)
            if self._stalled is not None:
                self._stalled.add(trial.trial_id)

    def on_step_begin(self, iteration, trials, **info):
        if not self.stall_timeout:
            return
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + CHECK_EVERY_S
        for trial in trials:
            if trial.status != "RUNNING" or trial.trial_id in self._killed:
                continue
            if trial.trial_id not in self._watch.clocks:  # running before this callback saw it start
                self._watch.started(trial.trial_id, now)
            silent = self._watch.stalled(trial.trial_id, now)
            if silent is not None:
                self._end(trial, silent)

    def _end(self, trial, silent: float) -> None:
        actor, node, pid = ray_private.trial_process(trial)
        failures, max_failures = ray_private.trial_failures(trial)
        retry = max_failures < 0 or failures < max_failures  # Ray counts this failure, then compares
        most = self._watch.limit_for(trial.trial_id) or 0.0
        self.out(stall.stall_line(f"trial {trial.trial_id}", node, silent, most, retry), flush=True)
        self._killed.add(trial.trial_id)
        self._watch.forget(trial.trial_id)
        stall.add(*_folder(trial), record=stall.stall_record(trial.trial_id, node, pid, silent, most, retry))
        if actor is not None:
            ray.kill(actor, no_restart=True)


def _folder(trial) -> tuple:
    """The experiment folder's pyarrow filesystem and path (local or object storage, as the trials')."""
    return trial.storage.storage_filesystem, trial.storage.experiment_fs_path


def replace_in(callbacks: list, stall_timeout: float) -> list:
    """`callbacks` (a restored run config's) with its StallWatch, if any, replaced by one for `stall_timeout`:
    experiments from before the watchdog get one, and a resume may change the setting."""
    return [c for c in callbacks or [] if not isinstance(c, StallWatch)] + [StallWatch(stall_timeout)]
