"""A progress line on the driver: trials finished/running/pending, epochs, elapsed time, and the time left.

Printed at most every `interval_s` (60 s by default) while trials run, and once more when the run ends.
Example (docs/search.md, "Progress and time left"):

    progress: 3/16 trials finished, 2 running, 11 pending; 41 epochs done of at most 160; elapsed 25m10s; ETA at most 1h02m (ASHA may stop trials sooner; at least 14m00s)

The time left is the epochs still open times the median measured epoch time, spread over the trials that
run at once. Under ASHA a running or pending trial may run until --max-epochs (the upper bound) or be stopped
at its next rung (the lower one): a trial is only ever stopped at a rung. A run of fixed configurations
(ablate.py, confirm.py) has no rungs: each run's open epochs are its budget less what it has done.

The arithmetic (estimate_left, open_epochs, format_line) is plain Python, tested without Ray
(tests/test_progress.py); ProgressLine only gathers the numbers from Ray Tune's trials.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence

from ray import tune

DEFAULT_INTERVAL_S = 60.0
FINISHED = ("TERMINATED", "ERROR")


def asha_milestones(grace_period: float, reduction_factor: float, max_t: float) -> list[float]:
    """The epochs at which a one-bracket ASHA decides (ray/tune/schedulers/async_hyperband.py, _Bracket)."""
    count = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return [grace_period * reduction_factor ** k for k in range(count)]


def open_epochs(done: int, budget: int, milestones: Sequence[float] = ()) -> tuple[int, int]:
    """(at least, at most) epochs a trial that has done `done` of `budget` may still run.

    At least: up to its next rung, where ASHA may stop it (its whole budget without rungs); at most: its budget.
    A trial at a rung has been decided there already, so the next rung is the first one above `done`."""
    most = max(0, budget - done)
    later = [m for m in milestones if m > done]
    least = min(most, max(0, math.ceil(min(later)) - done)) if later else most
    return least, most


def estimate_left(epoch_seconds: Sequence[float], open_per_trial: Sequence[int], concurrency: int) -> float | None:
    """Seconds until the open epochs are done; None until an epoch has been measured.

    Median seconds per epoch, times the open epochs spread over `concurrency` trials at a time, and never less
    than the longest single trial's open epochs (a trial runs its epochs one after the other)."""
    if not epoch_seconds:
        return None
    open_per_trial = [n for n in open_per_trial if n > 0]
    if not open_per_trial:
        return 0.0
    slots = max(1, min(concurrency, len(open_per_trial)))
    return statistics.median(epoch_seconds) * max(sum(open_per_trial) / slots, max(open_per_trial))


def format_duration(seconds: float) -> str:
    """12s, 4m05s, 1h02m (minutes rounded up past the hour: an estimate, not a clock)."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    hours, minutes = divmod(math.ceil(seconds / 60), 60)
    return f"{hours}h{minutes:02d}m"


def format_line(*, finished: int, running: int, pending: int, epochs_done: int, epochs_open: int,
                elapsed_s: float, left_most_s: float | None, left_least_s: float | None) -> str:
    """The progress line. left_*_s: estimate_left of the most and the least open epochs (equal without ASHA)."""
    total = finished + running + pending
    if not running and not pending:
        eta = "done"
    elif left_most_s is None:
        eta = "ETA unknown (no epoch measured yet)"
    elif left_least_s is not None and left_least_s < left_most_s:
        eta = (f"ETA at most {format_duration(left_most_s)} (ASHA may stop trials sooner; "
               f"at least {format_duration(left_least_s)})")
    else:
        eta = f"ETA about {format_duration(left_most_s)}"
    return (f"progress: {finished}/{total} trials finished, {running} running, {pending} pending; "
            f"{epochs_done} epochs done of at most {epochs_done + epochs_open}; "
            f"elapsed {format_duration(elapsed_s)}; {eta}")


class ProgressLine(tune.Callback):
    """Ray Tune callback printing format_line's line at most every `interval_s`, and when the run ends.

    total: the trials the run will have (num_samples); budget: epochs per trial, or {run id: epochs} for a run
    of fixed configurations (the trial's config["run"]); milestones: ASHA's rungs (none without ASHA).
    Concurrency is measured: the most trials seen running at once. log: where lines go (print by default)."""

    def __init__(self, total: int, budget: int | dict[str, int], milestones: Sequence[float] = (),
                 interval_s: float = DEFAULT_INTERVAL_S, log=None):
        self.total, self.budget, self.milestones = total, budget, tuple(milestones)
        self.interval_s, self.log = interval_s, log
        self._reset()

    def _reset(self) -> None:
        self._start = self._last = time.monotonic()
        self._epoch_seconds: list[float] = []
        self._most_running = 0

    def setup(self, **info) -> None:
        self._reset()  # a callback unpickled by a resumed run starts from nothing

    def on_step_begin(self, iteration, trials, **info) -> None:
        self._most_running = max(self._most_running, sum(t.status == "RUNNING" for t in trials))
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            self._say(self.line(trials, now))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if int(result.get("epoch") or 0) >= 1:
            # time_this_iter_s: the wall time between reports (training, evaluation, checkpoint). A resumed
            # trial reports the epochs it catches up on at once; the solver's own time_s holds their time.
            seconds = max(float(result.get("time_this_iter_s") or 0), float(result.get("time_s") or 0))
            if seconds > 0:
                self._epoch_seconds.append(seconds)

    def on_experiment_end(self, trials, **info) -> None:
        self._say(self.line(trials, time.monotonic()))

    def _say(self, line: str) -> None:
        if self.log is None:
            print(line, flush=True)
        else:
            self.log(line)

    def line(self, trials, now: float) -> str:
        counts = {"finished": 0, "running": 0, "pending": 0}
        least, most, done_total = [], [], 0
        seen_runs = set()
        for trial in trials:
            done = int((trial.last_result or {}).get("epoch") or 0)
            done_total += done
            budget = self._budget_of(trial, seen_runs)
            if trial.status in FINISHED:
                counts["finished"] += 1
                continue
            counts["running" if trial.status == "RUNNING" else "pending"] += 1
            low, high = open_epochs(done, budget, self.milestones)
            least.append(low)
            most.append(high)
        for budget in self._unstarted_budgets(len(trials), seen_runs):
            counts["pending"] += 1
            low, high = open_epochs(0, budget, self.milestones)
            least.append(low)
            most.append(high)
        concurrency = max(1, self._most_running)
        return format_line(**counts, epochs_done=done_total, epochs_open=sum(most), elapsed_s=now - self._start,
                           left_most_s=estimate_left(self._epoch_seconds, most, concurrency),
                           left_least_s=estimate_left(self._epoch_seconds, least, concurrency))

    def _budget_of(self, trial, seen_runs: set) -> int:
        if isinstance(self.budget, dict):
            run = (trial.config or {}).get("run")
            seen_runs.add(run)
            return self.budget.get(run, max(self.budget.values(), default=0))
        return self.budget

    def _unstarted_budgets(self, created: int, seen_runs: set) -> list[int]:
        """The budgets of the trials Ray has not created yet (a searcher suggests them one at a time)."""
        if isinstance(self.budget, dict):
            return [epochs for run, epochs in self.budget.items() if run not in seen_runs][:max(0, self.total - created)]
        return [self.budget] * max(0, self.total - created)


def for_experiment(plan, interval_s: float | None = None) -> ProgressLine:
    """The progress line of a search's Plan (ASHA's rungs) or of a runner.RunSet (each run's own epochs)."""
    interval_s = DEFAULT_INTERVAL_S if interval_s is None else interval_s  # read now: tests lower it
    runs = getattr(plan, "runs", None)
    if runs is not None:
        return ProgressLine(len(runs), {r["id"]: int(r["config"]["epochs"]) for r in runs}, interval_s=interval_s)
    return ProgressLine(plan.num_samples, plan.max_epochs,
                        asha_milestones(plan.grace_period, plan.reduction_factor, plan.max_epochs),
                        interval_s=interval_s)


def refresh(run_config, plan) -> None:
    """Give a resumed run (its RunConfig and callbacks unpickled from its first run) a new progress line in
    place of the old one, or one at all when the experiment was created before there was one."""
    kept = [c for c in run_config.callbacks or [] if not isinstance(c, ProgressLine)]
    run_config.callbacks = [*kept, for_experiment(plan)]
