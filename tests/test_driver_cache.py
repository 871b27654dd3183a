"""The decoded cache is built before any trial starts (issue 31, point 3): in the driver for a local run,
with decoder processes bounded by the CPUs the process may use and a progress line; a trial waiting on
another process's build gives up with one line once that build stops progressing."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
from filelock import FileLock
from PIL import Image

from hyperiqa.data import cache as cache_module
from hyperiqa.data.cache import DecodedCache, cache_key
from hyperiqa.utils import UserError
from tests.test_search import search_argv
from tuning import search


def _images(tmp_path: Path, n: int) -> list[str]:
    paths = []
    for i in range(n):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (20, 16), (i * 9 % 256, 40, 90)).save(path)
        paths.append(str(path))
    return paths


def test_decoder_workers_follow_the_process_affinity_not_the_host(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module.os, "sched_getaffinity", lambda pid: {0, 5, 7}, raising=False)
    monkeypatch.setattr(cache_module.os, "cpu_count", lambda: 64)
    assert cache_module.decoder_workers(0) == 3
    assert cache_module.decoder_workers(2) == 2  # cache_workers, when set, wins

    sizes = []

    class InlinePool(cf.ThreadPoolExecutor):  # records the pool size the build asks for; runs in threads
        def __init__(self, max_workers, mp_context=None):
            sizes.append(max_workers)
            super().__init__(max_workers)

    monkeypatch.setattr(cache_module.cf, "ProcessPoolExecutor", InlinePool)
    paths = _images(tmp_path, 40)  # 5 chunks of 8: more than 3 workers could take
    DecodedCache.build_or_open(paths, cache_dir=tmp_path / "cache", short_side=None, resize_to=None, min_size=1,
                               workers=0, log=lambda line: None)
    assert sizes == [3]

    monkeypatch.delattr(cache_module.os, "sched_getaffinity")  # macOS: the host's count is all there is
    assert cache_module.decoder_workers(0) == 64


def test_no_fork_from_a_threaded_process(monkeypatch):
    monkeypatch.setattr(cache_module, "_os_threads", lambda: 1)
    assert cache_module.start_method() == "fork"
    monkeypatch.setattr(cache_module, "_os_threads", lambda: 12)  # a Ray worker: gRPC and CUDA threads
    assert cache_module.start_method() == "forkserver"


def test_waiting_for_a_stalled_builder_is_a_bounded_one_line_error(tmp_path, monkeypatch):
    paths = _images(tmp_path, 3)
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    rule = {"short_side": None, "resize_to": None, "min_size": 1}
    lock_path = cache_dir / f"{cache_key([str(Path(p).resolve()) for p in paths], rule)}.lock"
    held, release = threading.Event(), threading.Event()

    def hung_builder():  # holds the lock and writes nothing, as a builder stuck on a dead NFS mount would
        with FileLock(str(lock_path)):
            held.set()
            release.wait(20)

    thread = threading.Thread(target=hung_builder)
    thread.start()
    held.wait(10)
    monkeypatch.setattr(cache_module, "LOCK_STALL_S", 0.5)
    lines = []
    try:
        start = time.monotonic()
        with pytest.raises(UserError, match="without seeing it progress") as info:
            DecodedCache.build_or_open(paths, cache_dir=cache_dir, short_side=None, resize_to=None, min_size=1,
                                       workers=1, log=lines.append)
        assert time.monotonic() - start < 15  # not the 20 s the builder holds the lock
    finally:
        release.set()
        thread.join()
    assert "\n" not in str(info.value) and str(lock_path) in str(info.value)
    assert any("waiting for it" in line for line in lines)


def test_a_local_search_builds_the_cache_in_the_driver_before_its_trial(tiny_dataset, tmp_path, capsys):
    cache_dir = tmp_path / "fresh-cache"  # no cache yet: someone must build it
    (tmp_path / "space.yaml").write_text("params:\n  backbone_lr: {type: choice, values: [0.001]}\n")
    argv = search_argv(tiny_dataset, cache_dir, tmp_path)[2:]
    argv = [a.replace("cache_workers=1", "cache_workers=2") for a in argv]
    argv[argv.index("--num-samples") + 1] = "1"
    argv[argv.index("--max-epochs") + 1] = "1"
    try:
        assert search.main(argv) == 0
    finally:
        ray.shutdown()
    out = capsys.readouterr().out
    before_ray = out.split("experiment:")[0]  # what the driver printed before the search began
    assert "decoded cache: 24/24 images (100%)" in before_ray and "images/s" in before_ray
    assert "decoded cache: ready for the trials (24 images" in before_ray
    built = [p for p in (cache_dir / "decoded").iterdir() if p.is_dir()]
    assert len(built) == 1
    logs = list((tmp_path / "ray" / "e2e").glob("*/train.log"))
    assert len(logs) == 1
    trial_log = logs[0].read_text()
    # The trial opened the driver's cache: it decoded nothing and waited for no one.
    assert "decoded cache:" not in trial_log, trial_log
    assert (built[0] / "meta.json").stat().st_mtime < logs[0].stat().st_mtime


def test_on_a_cluster_each_node_that_holds_a_trial_builds_its_cache(tiny_cfg, tmp_path):
    from tuning.engine import node_cache

    cfg = tiny_cfg(cache_dir=str(tmp_path / "node-cache"))
    lines = []
    ray.init(num_cpus=1, include_dashboard=False, address="local")
    try:
        node_cache.build_on_nodes([cfg, cfg.replace(seed=3)], cpus_per_trial=1, gpus_per_trial=0, log=lines.append)
        built = [p for p in (tmp_path / "node-cache" / "decoded").iterdir() if p.is_dir()]
        lines_without_gpu = []
        node_cache.build_on_nodes([cfg], cpus_per_trial=1, gpus_per_trial=1, log=lines_without_gpu.append)
    finally:
        ray.shutdown()
    assert len(built) == 1  # the seed does not change the cache: one build
    assert lines[0] == "decoded cache: building on 1 node(s) before the trials start"
    assert len(lines) == 2 and "ready (24 images" in lines[1], lines
    assert lines_without_gpu == ["decoded cache: building on 0 node(s) before the trials start"]  # no trial fits it


def test_verify_images_decodes_in_parallel_and_names_the_broken_file(tmp_path):
    """Through the CLI as users run it (`python -m`): its workers must find their function by module name."""
    paths = _images(tmp_path, 130)  # 3 chunks of 64
    (tmp_path / "labels.csv").write_text("image,label\n" + "".join(f"{Path(p).name},{i % 7}\n"
                                                                     for i, p in enumerate(paths)))
    data = Path(paths[100]).read_bytes()
    Path(paths[100]).write_bytes(data[: len(data) // 2])
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "hyperiqa.data", "--dataset", "csv", "--data-root", str(tmp_path),
                             "--option", "csv=labels.csv", "--option", "image_column=image", "--option",
                             "label_column=label", "--verify-images", "--json"], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(root)}, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["unreadable"] == [str(Path(paths[100]).resolve())]
