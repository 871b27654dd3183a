"""The progress line's arithmetic and the callback that gathers its numbers, on stand-in trials (no Ray run).

A real search prints it too: tests/test_search.py checks the resumed search's output.
"""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest

from tuning.engine import progress
from tuning.engine.progress import ProgressLine, estimate_left, format_duration, format_line, open_epochs


def test_no_estimate_until_an_epoch_is_measured():
    assert estimate_left([], [3, 3], 2) is None
    assert estimate_left([10.0], [0, 0], 2) == 0.0


def test_the_estimate_is_the_median_epoch_times_the_open_epochs_over_the_concurrency():
    # median 10 s (the 100 s first epoch does not count for more); 12 open epochs on 2 slots: 6 epochs each
    assert estimate_left([10.0, 100.0, 9.0, 11.0, 10.0], [4, 4, 4], 2) == pytest.approx(60.0)
    # one trial with 9 open epochs cannot go faster than 9 epochs, however many slots are free
    assert estimate_left([10.0], [9, 1, 1], 4) == pytest.approx(90.0)
    # fewer open trials than slots: the slots left idle do not count
    assert estimate_left([10.0], [2, 2], 8) == pytest.approx(20.0)


def test_open_epochs_run_to_the_next_rung_at_least_and_to_the_budget_at_most():
    rungs = [1, 2, 4]
    assert open_epochs(0, 8, rungs) == (1, 8)
    assert open_epochs(1, 8, rungs) == (1, 7)  # decided at rung 1 already: the next one is 2
    assert open_epochs(3, 8, rungs) == (1, 5)
    assert open_epochs(4, 8, rungs) == (4, 4)  # past the last rung: runs to the end
    assert open_epochs(8, 8, rungs) == (0, 0)
    assert open_epochs(2, 6, []) == (4, 4)  # no ASHA
    assert open_epochs(0, 4, [1.5, 2.25]) == (2, 4)  # a fractional rung is reached at the epoch after it


@pytest.mark.parametrize("grace, factor, max_t", [(1, 2, 8), (1, 3, 9), (2, 2, 10), (3, 2, 4), (1, 1.5, 5), (5, 4, 5)])
def test_milestones_are_the_rungs_ray_asha_decides_at(grace, factor, max_t):
    from tuning.engine.ray_private import asha_rungs
    from tuning.sweep.asha import ResumableASHA

    scheduler = ResumableASHA(time_attr="epoch", max_t=max_t, grace_period=grace, reduction_factor=factor)
    ray_milestones = sorted(milestone for milestone, _ in asha_rungs(scheduler))
    assert progress.asha_milestones(grace, factor, max_t) == pytest.approx(ray_milestones)


def test_durations():
    assert [format_duration(s) for s in (0, 12.4, 60, 245, 3599, 3600, 3721, 7199)] == \
        ["0s", "12s", "1m00s", "4m05s", "59m59s", "1h00m", "1h03m", "2h00m"]


def test_the_line_says_what_is_known():
    counts = {"finished": 3, "running": 2, "pending": 11, "epochs_done": 41, "epochs_open": 119, "elapsed_s": 1510}
    assert format_line(**counts, left_most_s=None, left_least_s=None) == (
        "progress: 3/16 trials finished, 2 running, 11 pending; 41 epochs done of at most 160; elapsed 25m10s; "
        "ETA unknown (no epoch measured yet)")
    assert format_line(**counts, left_most_s=3720, left_least_s=840).endswith(
        "ETA at most 1h02m (ASHA may stop trials sooner; at least 14m00s)")
    assert format_line(**counts, left_most_s=720, left_least_s=720).endswith("ETA about 12m00s")
    assert format_line(finished=4, running=0, pending=0, epochs_done=9, epochs_open=0, elapsed_s=65,
                       left_most_s=None, left_least_s=None).endswith("9 epochs done of at most 9; elapsed 1m05s; done")


def trial(status: str, epoch: int = 0, run: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(status=status, last_result={"epoch": epoch} if epoch else {},
                           config={"run": run} if run else {})


def test_a_search_line_counts_trials_the_searcher_has_not_suggested_yet():
    lines: list[str] = []
    callback = ProgressLine(total=4, budget=8, milestones=[1, 2, 4], interval_s=0, log=lines.append)
    callback.setup()
    trials = [trial("TERMINATED", 2), trial("RUNNING", 3), trial("RUNNING", 1)]
    callback.on_step_begin(0, trials)
    assert "ETA unknown" in lines[-1] and "1/4 trials finished, 2 running, 1 pending" in lines[-1]
    for seconds in (10.0, 12.0, 14.0):
        callback.on_trial_result(0, trials, trials[1], {"epoch": 3, "time_this_iter_s": seconds})
    callback.on_trial_result(0, trials, trials[1], {"epoch": 0, "time_this_iter_s": 99.0})  # a failed start
    callback.on_step_begin(1, trials)
    # open at most: 5 + 7 + 8 (unsuggested) = 20 epochs on 2 slots, 12 s each; at least 1 + 1 + 1 on 2 slots
    assert "6 epochs done of at most 26" in lines[-1]
    assert lines[-1].endswith("ETA at most 2m00s (ASHA may stop trials sooner; at least 18s)")


def test_lines_come_at_most_every_interval_and_once_at_the_end():
    lines: list[str] = []
    callback = ProgressLine(total=1, budget=2, interval_s=3600, log=lines.append)
    callback.setup()
    callback.on_step_begin(0, [trial("RUNNING", 1)])
    assert lines == []
    callback.on_experiment_end([trial("TERMINATED", 2)])
    assert len(lines) == 1 and lines[0].startswith("progress: 1/1 trials finished")


def test_a_fixed_run_uses_each_runs_own_epochs_and_says_about():
    lines: list[str] = []
    runset = SimpleNamespace(runs=[{"id": "a", "config": {"epochs": 4}}, {"id": "b", "config": {"epochs": 10}},
                                   {"id": "c", "config": {"epochs": 6}}])
    callback = progress.for_experiment(runset, interval_s=0)
    callback.log = lines.append
    callback.setup()
    trials = [trial("RUNNING", 1, run="a")]
    callback.on_step_begin(0, trials)
    callback.on_trial_result(0, trials, trials[0], {"epoch": 1, "time_this_iter_s": 0.5, "time_s": 30.0})
    callback.on_step_begin(1, trials)
    # a: 3 open; b and c not created yet: 10 and 6; one trial ran at once; 19 epochs of 30 s (the solver's
    # time_s: a resumed run reports the epochs it catches up on at once)
    assert "1 epochs done of at most 20" in lines[-1] and lines[-1].endswith("ETA about 9m30s")
    trials = [trial("TERMINATED", 4, run="a"), trial("RUNNING", 2, run="b")]
    callback.on_step_begin(2, trials)
    # c, not created yet, is the one left with 6 epochs (a's 4 are done): 8 + 6 on 1 slot
    assert "6 epochs done of at most 20" in lines[-1] and lines[-1].endswith("ETA about 7m00s")


def test_a_resumed_run_gets_a_fresh_progress_line_whether_or_not_it_had_one():
    plan = SimpleNamespace(num_samples=4, max_epochs=8, grace_period=1, reduction_factor=2)
    old = pickle.loads(pickle.dumps(progress.for_experiment(plan)))  # as tuner.pkl holds it
    other = object()
    for callbacks in ([other, old], [other], None):
        config = SimpleNamespace(callbacks=callbacks)
        progress.refresh(config, plan)
        assert config.callbacks[-1] is not old and isinstance(config.callbacks[-1], ProgressLine)
        assert sum(isinstance(c, ProgressLine) for c in config.callbacks) == 1
        assert config.callbacks[-1].milestones == (1, 2, 4, 8)
