"""The decoded cache, built before any trial trains: in the driver on a local run, once per node on a cluster.

A trial that finds no cache builds it (hyperiqa.data.open_cache), and every other trial on its node waits
on the build's lock, each holding its CPUs or GPU idle: KonIQ-10k's 10,073 images take minutes. So the
CLIs (search.py, ablate.py, confirm.py) build it first: a local run in the driver, before Ray starts
(`build_local`); a joined cluster with one Ray task pinned to each node that can hold a trial
(`build_on_nodes`). A node that joins later, or a configuration whose resize rule a search samples, still
builds in its first trial; the others wait for that build as long as it progresses (cache.LOCK_STALL_S).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable

from hyperiqa.config import TrainConfig
from hyperiqa.errors import UserError

# What the cache key depends on besides the files (hyperiqa.data.open_cache): configs equal here share one cache.
_CACHE_FIELDS = ("dataset", "data_root", "dataset_options", "resize_short_side", "resize_to", "patch_size",
                 "cache_dir", "cache_workers")


def distinct_caches(configs: Iterable[TrainConfig]) -> list[TrainConfig]:
    """One configuration per distinct cache among `configs`, in their order."""
    seen, out = set(), []
    for cfg in configs:
        fields = cfg.to_dict()
        key = json.dumps({k: fields.get(k) for k in _CACHE_FIELDS}, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    return out


def runset_configs(runset) -> list[TrainConfig]:
    """The configurations of a runner.RunSet (ablate.py, confirm.py), one per distinct cache."""
    return distinct_caches(TrainConfig.from_dict(r["config"], source=f"run {r['id']}") for r in runset.runs)


def build_local(configs: Iterable[TrainConfig], log: Callable[[str], None] = print) -> None:
    """Build (or open) every cache the runs read, here, before Ray starts."""
    from hyperiqa.data import open_cache

    for cfg in distinct_caches(configs):
        start = time.perf_counter()
        cache = open_cache(cfg, log=log)
        log(f"decoded cache: ready for the trials ({len(cache)} images, {cache.data.nbytes / 2**20:.0f} MiB, "
            f"{time.perf_counter() - start:.1f} s)")


def build_on_nodes(configs: Iterable[TrainConfig], cpus_per_trial: float, gpus_per_trial: float,
                   log: Callable[[str], None] = print) -> None:
    """On a joined cluster: one task per alive node that can hold a trial builds (or opens) the caches there.

    A node where it fails (dataset missing there, an image that does not decode) gets one warning line;
    its trials then fail with the same message, as they would have without this step."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cfgs = [c.to_dict() for c in distinct_caches(configs)]
    nodes = [n for n in ray.nodes() if n.get("Alive") and _holds_trial(n.get("Resources", {}), cpus_per_trial,
                                                                          gpus_per_trial)]
    task = ray.remote(num_cpus=1, max_retries=0)(_build_on_this_node)
    pending = {task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(cfgs):
               n for n in nodes}
    log(f"decoded cache: building on {len(nodes)} node(s) before the trials start")
    for ref, node in pending.items():
        where = f"{node.get('NodeManagerAddress', '?')} ({node['NodeID'][:8]})"
        try:
            lines = ray.get(ref)
        except Exception as exc:  # the task's process died (out of memory, node lost): trials will try again
            log(f"warning: decoded cache on node {where}: the build failed ({type(exc).__name__}); its trials "
                "will build it themselves")
            continue
        for line in lines:
            log(f"decoded cache on node {where}: {line}")


def _holds_trial(resources: dict, cpus: float, gpus: float) -> bool:
    return resources.get("CPU", 0) + 1e-9 >= max(cpus, 1) and resources.get("GPU", 0) + 1e-9 >= gpus


def _build_on_this_node(cfgs: list[dict]) -> list[str]:
    """Runs in a Ray task on one node; returns one summary line per cache (or the reason it failed)."""
    from hyperiqa.data import open_cache

    out = []
    for fields in cfgs:
        cfg = TrainConfig.from_dict(fields, source="decoded cache")
        start = time.perf_counter()
        try:
            cache = open_cache(cfg, log=lambda line: print(line, flush=True))  # Ray forwards it to the driver
        except UserError as exc:
            out.append(f"warning: {exc} (the trials on this node will fail with it)")
            continue
        out.append(f"ready ({len(cache)} images, {cache.data.nbytes / 2**20:.0f} MiB, "
                   f"{time.perf_counter() - start:.1f} s)")
    return out
