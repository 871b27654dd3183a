"""Flags and checks shared by the Ray CLIs (search.py, ablate.py, confirm.py); no Ray imports here.

Each CLI adds its own flags; these groups mean the same thing in all of them, and the checks run
before Ray starts, so a mistake is one line naming the flag.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from hyperiqa.config import PRESETS, TrainConfig
from hyperiqa.utils import UserError

PATH_FIELDS = ("data_root", "split_file", "backbone_weights", "cache_dir")
AUTO = "auto"  # --gpus: every GPU this process (or the joined cluster) has
DATASETS_HELP = "koniq10k, livec, bid, live, csiq, tid2013, kadid10k, spaq, csv, demo, photos"


def add_resource_flags(p: argparse.ArgumentParser, unit: str = "trial") -> None:
    r = p.add_argument_group("resources")
    r.add_argument("--gpus", type=gpus_value, default=AUTO, metavar="N|auto",
                   help="GPUs to use in total; auto = every GPU this process may use (CUDA_VISIBLE_DEVICES "
                        "honoured; with --address: the cluster's), none on a CPU machine; 0 = CPU only (default auto)")
    r.add_argument(f"--gpus-per-{unit}", dest="gpus_per_trial", type=float, metavar="G",
                   help=f"GPUs per {unit}, at most 1; fractions share a GPU and cap each {unit}'s GPU memory to its "
                        "share (default 1 when there are GPUs, else 0)")
    r.add_argument("--max-concurrent", type=int, metavar="N",
                   help=f"at most N {unit}s at once (default: as many as --gpus and the cluster's CPUs allow)")
    r.add_argument(f"--cpus-per-{unit}", dest="cpus_per_trial", type=float, default=1, metavar="C",
                   help=f"CPUs per {unit}, also its torch threads (default 1)")


def add_data_flags(p: argparse.ArgumentParser, title: str, set_help: str) -> argparse._ArgumentGroup:
    g = p.add_argument_group(title)
    g.add_argument("--dataset", default="demo", help=f"dataset reader: {DATASETS_HELP} (default demo)")
    g.add_argument("--data-root", metavar="DIR", help=f"dataset folder (not needed for {' and '.join(PRESETS)})")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    return g


def add_cluster_flags(g: argparse._ArgumentGroup, default_storage: str = "ray_results") -> None:
    g.add_argument("--storage-path", default=default_storage, metavar="PATH",
                   help=f"where trials and checkpoints go: a folder, NFS, or s3://... (default ./{default_storage}); "
                        "multi-node clusters need storage every node can reach")
    g.add_argument("--address", help="join a running Ray cluster (auto, or HOST:PORT of `ray start --head`); "
                   "without it, a Ray of this run's own (RAY_ADDRESS, as in a Ray Job, also joins)")
    g.add_argument("--dashboard-host", help="interface of the Ray dashboard started here (default 127.0.0.1; "
                   "anything else prints a warning; ignored when joining a cluster)")
    g.add_argument("--dashboard-port", type=int, metavar="PORT",
                   help="dashboard port (default 8265 or the next free; ignored when joining a cluster)")
    g.add_argument("--no-dashboard", dest="dashboard", action="store_false",
                   help="start a local Ray without its dashboard (about 1.5 s and 3 CPU-seconds less at start; "
                        "Ray's trial table still prints here)")


def add_stall_flag(g) -> None:
    """--stall-timeout (tuning/engine/stall.py): None when not given, so that --resume keeps the experiment's own."""
    from tuning.engine import stall

    g.add_argument("--stall-timeout", type=float, metavar="SECONDS",
                   help=f"a trial that reports nothing for max(SECONDS, {stall.EPOCH_MULTIPLE:g} x its slowest epoch) is "
                        f"killed (its GPU freed) and retried from its last checkpoint, {stall.MAX_RETRIES} times, then "
                        f"ends as stalled; 0 = never (default {stall.DEFAULT_STALL_TIMEOUT:g}; with --resume: the "
                        "experiment's own). docs/clusters.md")


def stall_timeout(value: float | None, resumed: float | None = None) -> float:
    """--stall-timeout checked; not given: the resumed experiment's setting, else the default."""
    from tuning.engine import stall

    if value is None:
        return stall.DEFAULT_STALL_TIMEOUT if resumed is None else resumed
    return stall.check_stall_timeout(value)


def is_uri(path: str) -> bool:
    return "://" in path


def absolute(path: str) -> str:
    return path if is_uri(path) else str(Path(path).expanduser().resolve())


def resume_command(script: str, experiment_path: str) -> str:
    """The shell command that continues an experiment; quoted, so a path with spaces pastes as one word."""
    storage, name = experiment_path.rstrip("/").rsplit("/", 1)
    return shlex.join(["python", f"tuning/{script}", "--resume", "--storage-path", storage, "--name", name])


def writable_storage(path: str, flag: str = "--storage-path") -> str:
    """`path` made absolute, once its nearest existing folder is known to accept new files (Ray creates the
    rest); a URI is left to its own filesystem. Before Ray starts, so the mistake is one line, not a traceback."""
    if is_uri(path):
        return path
    full = Path(absolute(path))
    existing = next(p for p in (full, *full.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, not a folder; give a folder (created if missing)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: cannot create files in {existing} (not writable by this user); "
                        "give a folder you can write to")
    return str(full)


def check_name(name: str) -> str:
    if "/" in name or name.startswith("."):
        raise UserError(f"--name {name!r}: a plain folder name is expected (no '/', not starting with '.')")
    return name


def base_config(dataset: str, data_root: str | None, sets: list[str]) -> TrainConfig:
    """--dataset's configuration (dataset_config), then --set."""
    return dataset_config(dataset, data_root).with_overrides(sets, source="--set")


def dataset_config(dataset: str, data_root: str | None) -> TrainConfig:
    """The dataset's preset (demo_config(), photos_config(): CPU-sized), the paper defaults otherwise."""
    if dataset in PRESETS:
        return PRESETS[dataset](**({"data_root": data_root} if data_root else {}))
    if not data_root:
        raise UserError(f"--dataset {dataset}: --data-root (the dataset folder) is required")
    return TrainConfig.from_dict({"dataset": dataset, "data_root": data_root}, source="--dataset")


def finite(flag: str, value: float) -> float:
    """`value`, refused in one line naming `flag` if it is nan or inf (argparse's float() accepts both)."""
    if not math.isfinite(value):
        raise UserError(f"{flag} {value}: must be a finite number")
    return value


def at_least(flag: str, value: int | None, low: int, meaning: str = "") -> int | None:
    """`value` (None: not given), refused in one line naming `flag` if it is below `low`."""
    if value is not None and value < low:
        raise UserError(f"{flag} {value}: must be >= {low}{meaning}")
    return value


@dataclass(frozen=True)
class Resources:
    """What the resource flags ask for, checked: GPUs in total, each trial's (or run's) share, how many at once."""

    gpus: float | None          # None: --gpus auto on a joined cluster, until `settle` once connected
    gpus_per_trial: float | None  # None only with gpus None and no --gpus-per-<unit>
    cpus_per_trial: float
    max_concurrent: int | None = None  # None: as many at once as the resources allow


def resources(gpus: float | str, gpus_per_trial: float | None, cpus_per_trial: float, max_concurrent: int | None,
              unit: str = "trial", *, joined: bool = False) -> Resources:
    """The values of add_resource_flags' flags (--gpus: a number or AUTO; --gpus-per-<unit>: None when not
    given), checked. Ray started here (not `joined`): --gpus is checked against the GPUs this process may use,
    and AUTO becomes their count. Joining a cluster: AUTO stays gpus=None until `settle`, once connected."""
    if gpus != AUTO:
        finite("--gpus", gpus)
    if gpus_per_trial is not None:
        finite(f"--gpus-per-{unit}", gpus_per_trial)
    finite(f"--cpus-per-{unit}", cpus_per_trial)
    if gpus != AUTO and gpus < 0:
        raise UserError(f"--gpus {gpus:g}: must be >= 0 (0 = CPU only)")
    _check_shares(gpus_per_trial or 0.0, cpus_per_trial, max_concurrent, unit)  # what needs no GPU count
    if gpus == AUTO and joined:  # the rest once connected
        return Resources(None, gpus_per_trial, float(cpus_per_trial), max_concurrent)
    found = None
    if not joined and (gpus == AUTO or gpus > 0):  # --gpus 0 needs no count (nor torch's CUDA probe)
        found = len(visible_gpus())
        if gpus != AUTO and math.ceil(gpus - 1e-9) > found:
            raise UserError(f"--gpus {gpus:g}: this process may use {found} GPU(s){visible_note()}; "
                            + (f"give at most {found}, or leave --gpus out (auto: all {found})" if found else
                               "leave --gpus out or give --gpus 0 to train on CPU"))
    return settle(gpus, gpus_per_trial, cpus_per_trial, max_concurrent, unit, found=found, where="this machine")


def settle(gpus: float | str | None, gpus_per_trial: float | None, cpus_per_trial: float,
           max_concurrent: int | None, unit: str = "trial", *, found: float | None = None,
           where: str = "the Ray cluster") -> Resources:
    """Resources with --gpus auto (AUTO or None) replaced by `found`, the GPUs `where` has; the shares checked."""
    auto = gpus in (AUTO, None)
    total = float(found or 0.0) if auto else float(gpus)
    flag = f"--gpus-per-{unit}"
    per_trial = gpus_per_trial if gpus_per_trial is not None else (1.0 if total else 0.0)
    if total == 0 and per_trial:
        raise UserError(f"{flag} {per_trial:g} needs --gpus N (GPUs in total; 0 means CPU only)" if not auto else
                        f"{flag} {per_trial:g} needs --gpus N > 0, but --gpus auto found no GPU on {where}"
                        + (visible_note() if where == "this machine" else "")
                        + f"; leave {flag} out to train on CPU")
    if total and not 0 < per_trial <= total:
        raise UserError(f"{flag} {per_trial:g}: must be > 0 and <= --gpus {total:g}")
    _check_shares(per_trial, cpus_per_trial, max_concurrent, unit)
    return Resources(total, float(per_trial), float(cpus_per_trial), max_concurrent)


def _check_shares(per_trial: float, cpus_per_trial: float, max_concurrent: int | None, unit: str) -> None:
    if per_trial > 1:
        raise UserError(f"--gpus-per-{unit} {per_trial:g}: a {unit} trains on one GPU (no data parallelism), so "
                        "more would be reserved and left idle; use 1, or a fraction such as 0.5 to share a GPU")
    if cpus_per_trial <= 0:
        raise UserError(f"--cpus-per-{unit} {cpus_per_trial:g}: must be > 0")
    if max_concurrent is not None and max_concurrent < 1:
        raise UserError(f"--max-concurrent {max_concurrent}: must be >= 1")


def gpus_value(text: str) -> float | str:
    """--gpus as argparse reads it: AUTO or a number (nan and inf are refused later, naming the flag)."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of GPUs, or auto") from None


def cluster_to_join(address_flag: str | None, environ=os.environ) -> str | None:
    """The cluster a run joins: --address, else RAY_ADDRESS (which Ray sets for a Ray Job's entrypoint);
    None (or "local") means a Ray of the run's own. Never the address a bootstrap file on this machine names
    (/tmp/ray/ray_current_cluster, left by `ray start` or a head that ended without `ray stop`)."""
    for address in (address_flag, environ.get("RAY_ADDRESS")):
        if address and address.strip():
            return None if address.strip() == "local" else address.strip()
    return None


def joins_cluster(address: str | None) -> bool:
    """Whether Ray is joined rather than started here (cluster_to_join)."""
    return cluster_to_join(address) is not None


def visible_gpus() -> list[str]:
    """The GPUs this process may use, named as CUDA_VISIBLE_DEVICES names them (0..n-1 when it is unset).

    torch counts them through NVML, which honours CUDA_VISIBLE_DEVICES and does not initialise CUDA here
    (a later fork stays safe); a CPU-only torch counts none."""
    count = _cuda_device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return [d.strip() for d in listed.split(",") if d.strip()][:count]


def _cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count()


def visible_note() -> str:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "" if listed is None else f" (CUDA_VISIBLE_DEVICES={listed!r})"


def concurrency_line(at_once: int, resources: Resources, unit: str, gpu_ids: list[str] | None) -> str:
    """The one line a run prints at start: how many trials (or runs) at once, each on what.
    `gpu_ids`: the GPUs given to a Ray started here; None on a joined cluster."""
    units = unit if at_once == 1 else f"{unit}s"
    cpus = f"{resources.cpus_per_trial:g} CPU{'' if resources.cpus_per_trial == 1 else 's'}"
    if not resources.gpus_per_trial:
        return f"{at_once} {units} at once, each {cpus}, no GPU"
    where = (f"GPUs {','.join(gpu_ids)}" if gpu_ids is not None
             else f"{resources.gpus:g} of the Ray cluster's GPUs")
    return f"{at_once} {units} at once, each {resources.gpus_per_trial:g} GPU + {cpus} ({where})"


def for_ray(cfg: TrainConfig, resources: Resources, **changes) -> TrainConfig:
    """The config as a Ray trial runs it, with `changes` (one validation for both): its device, threads and
    GPU share; every path absolute (trials do not run in the launch folder)."""
    share = resources.gpus_per_trial or 0.0  # unsettled (None): replaced once the cluster is known
    return cfg.replace(
        **changes, device="cuda" if share else "cpu", num_threads=max(1, math.floor(resources.cpus_per_trial)),
        # A trial sharing a GPU must not take the whole card: cap its memory to its share.
        gpu_memory_fraction=share if 0 < share < 1 else cfg.gpu_memory_fraction,
        **{f: absolute(getattr(cfg, f)) for f in PATH_FIELDS if getattr(cfg, f)})


def check_dataset(cfg: TrainConfig) -> None:
    """Read the dataset (every image must exist) and make its split once, before any trial starts."""
    from hyperiqa.data.datasets import dataset_from_config
    from hyperiqa.data.splits import make_split

    spec = dataset_from_config(cfg)
    split = make_split(spec, cfg)
    name = cfg.selection_metric.split("_")[0]
    if len(getattr(split, name)) == 0:
        raise UserError(f"--metric {cfg.selection_metric}: the split has no {name} images; "
                        f"raise {name}_fraction with --set {name}_fraction=0.2 or use the official split")
