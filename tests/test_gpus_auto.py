"""--gpus auto (the default): the GPUs this process may use, or a joined cluster's; on this CPU machine the
GPU count is mocked (options._cuda_device_count) and Ray is given logical GPUs."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import ray

from hyperiqa.utils import UserError
from tuning.engine import launch, options
from tuning.engine.runner import RunSet
from tuning.sweep import experiment as search


@pytest.fixture
def gpus(monkeypatch):
    """Pretend torch counts `n` GPUs for this process; CUDA_VISIBLE_DEVICES unset unless a test sets it."""
    # setenv first: monkeypatch records the variable's state only when it changes it, and start_ray narrows
    # os.environ itself; teardown then puts back whatever the suite had (unset on CI)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")

    def have(n: int, visible: str | None = None) -> None:
        monkeypatch.setattr(options, "_cuda_device_count", lambda: n)
        if visible is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)

    return have


def test_auto_is_every_gpu_this_process_may_use_and_none_on_a_cpu_machine(gpus):
    assert search.build_parser().parse_args([]).gpus == options.AUTO
    gpus(0)
    assert options.resources(options.AUTO, None, 1, None) == options.Resources(0.0, 0.0, 1.0)
    gpus(4)
    assert options.visible_gpus() == ["0", "1", "2", "3"]
    assert options.resources(options.AUTO, None, 4, None) == options.Resources(4.0, 1.0, 4.0)
    assert options.resources(options.AUTO, 0.5, 1, None).gpus_per_trial == 0.5
    gpus(2, visible="2,3")  # torch's count honours the list; the names are the list's
    assert options.visible_gpus() == ["2", "3"]
    gpus(1, visible="GPU-aa, GPU-bb")  # a list naming a device torch cannot use: only the first counts
    assert options.visible_gpus() == ["GPU-aa"]


def test_gpus_0_forces_the_cpu_without_asking_torch(monkeypatch):
    monkeypatch.setattr(options, "_cuda_device_count", lambda: pytest.fail("counted GPUs for --gpus 0"))
    assert options.resources(0.0, None, 1, None) == options.Resources(0.0, 0.0, 1.0)


def test_more_gpus_than_the_process_may_use_is_one_line_before_ray_starts(gpus, monkeypatch, tmp_path):
    gpus(2, visible="2,3")
    with pytest.raises(UserError) as exc:
        options.resources(3.0, None, 1, None)
    assert str(exc.value) == ("--gpus 3: this process may use 2 GPU(s) (CUDA_VISIBLE_DEVICES='2,3'); give at most 2, "
                              "or leave --gpus out (auto: all 2)")
    with pytest.raises(UserError, match=r"^--gpus 2.5: this process may use 2 GPU"):  # 2.5 needs a third
        options.resources(2.5, None, 1, None)
    gpus(0)
    monkeypatch.setattr(launch, "start_ray", lambda *a, **k: pytest.fail("Ray started"))
    with pytest.raises(UserError) as exc:
        search.main(["--gpus", "1", "--storage-path", str(tmp_path)])
    assert str(exc.value) == ("--gpus 1: this process may use 0 GPU(s); leave --gpus out or give --gpus 0 to "
                              "train on CPU")
    with pytest.raises(UserError, match=r"^--gpus-per-trial 0.5 needs --gpus N > 0, but --gpus auto found no GPU "
                                        r"on this machine; leave --gpus-per-trial out to train on CPU$"):
        options.resources(options.AUTO, 0.5, 1, None)
    with pytest.raises(SystemExit):
        search.build_parser().parse_args(["--gpus", "all"])


def test_auto_on_a_joined_cluster_waits_for_the_cluster_and_moves_every_run_to_its_gpus(gpus, tiny_cfg, tmp_path,
                                                                                          monkeypatch):
    gpus(0)  # the driver's machine has none; the cluster has two
    assert options.joins_cluster("10.0.0.1:6379") and not options.joins_cluster(None)  # conftest removes RAY_ADDRESS
    r = options.resources(options.AUTO, None, 2, None, unit="run", joined=True)
    assert r == options.Resources(None, None, 2.0)
    runs = ({"id": "a", "labels": {}, "config": options.for_ray(tiny_cfg(), r).to_dict()},)
    assert runs[0]["config"]["device"] == "cpu"
    unsettled = RunSet("ablate", runs, "val_srcc", r.gpus, r.gpus_per_trial, r.cpus_per_trial, str(tmp_path), "x",
                       str(tmp_path / "out"))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 2.0})
    settled = launch.settle_gpus(unsettled)
    assert (settled.gpus, settled.gpus_per_trial, settled.runs[0]["config"]["device"]) == (2.0, 1.0, "cuda")
    assert launch.settle_gpus(settled) is settled
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0})
    assert launch.settle_gpus(unsettled).runs[0]["config"]["device"] == "cpu"
    half = RunSet("ablate", runs, "val_srcc", None, 0.5, 2.0, str(tmp_path), "x", str(tmp_path / "out"))
    with pytest.raises(UserError, match=r"^--gpus-per-run 0.5 needs --gpus N > 0, but --gpus auto found no GPU on "
                                        r"the Ray cluster; leave --gpus-per-run out to train on CPU$"):
        launch.settle_gpus(half)


def test_a_local_ray_gets_the_first_n_gpus_and_auto_all_of_them(gpus, monkeypatch):
    seen: dict = {}
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw) or SimpleNamespace(dashboard_url=None))
    gpus(4)
    launch.start_ray(None, None, None, log=lambda *_: None, dashboard=False, gpus=4.0)
    assert seen["num_gpus"] == 4 and "CUDA_VISIBLE_DEVICES" not in os.environ  # all of them: left as is
    launch.start_ray(None, None, None, log=lambda *_: None, dashboard=False, gpus=1.5)
    assert seen["num_gpus"] == 2 and os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    gpus(4, visible="3,2,1,0")
    launch.start_ray(None, None, None, log=lambda *_: None, dashboard=False, gpus=0.0)  # --gpus 0: hidden
    assert seen["num_gpus"] == 0 and os.environ["CUDA_VISIBLE_DEVICES"] == ""
    gpus(2)  # a search started with --gpus 4, resumed on a smaller machine
    with pytest.raises(UserError, match=r"^--gpus 4 \(the experiment's\): this process may use 2 GPU\(s\); "
                                        r"continue it where it may use 4$"):
        launch.start_ray(None, None, None, log=lambda *_: None, dashboard=False, gpus=4.0)
    seen.clear()
    launch.start_ray("10.0.0.1:6379", None, None, log=lambda *_: None, gpus=4.0)  # a cluster has its own
    assert "num_gpus" not in seen


def test_the_start_line_says_how_many_at_once_on_what():
    line = options.concurrency_line
    assert line(4, options.Resources(4.0, 1.0, 4.0), "trial", ["0", "1", "2", "3"]) == \
        "4 trials at once, each 1 GPU + 4 CPUs (GPUs 0,1,2,3)"
    assert line(1, options.Resources(0.0, 0.0, 1.0), "run", None) == "1 run at once, each 1 CPU, no GPU"
    assert line(8, options.Resources(4.0, 0.5, 2.0), "trial", None) == \
        "8 trials at once, each 0.5 GPU + 2 CPUs (4 of the Ray cluster's GPUs)"


@ray.remote(num_gpus=1, num_cpus=0)
class _Worker:
    def visible(self) -> str:
        return os.environ.get("CUDA_VISIBLE_DEVICES", "")


def test_gpus_2_of_4_visible_gives_ray_the_first_two(gpus, capsys):
    """A real local Ray with logical GPUs: two workers holding a GPU each see the two devices it was limited to."""
    gpus(4, visible="4,5,6,7")
    try:
        launch.start_ray(None, None, None, log=lambda *_: None, dashboard=False, gpus=2.0)
        assert ray.cluster_resources()["GPU"] == 2
        workers = [_Worker.remote(), _Worker.remote()]  # alive together: one GPU each
        assert sorted(ray.get([w.visible.remote() for w in workers])) == ["4", "5"]
        plan = SimpleNamespace(gpus=2.0, gpus_per_trial=1.0, cpus_per_trial=0.5, num_samples=8, max_concurrent=None)
        assert launch.max_concurrent(plan) == 2
    finally:
        ray.shutdown()
    assert capsys.readouterr().out.splitlines() == ["2 trials at once, each 1 GPU + 0.5 CPUs (GPUs 4,5)"]
