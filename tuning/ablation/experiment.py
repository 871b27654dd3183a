"""Which of the original solver's defects makes test SRCC peak at epoch 1 and then fall? Measure it.

    python tuning/ablate.py                     # the demo: generated dataset, CPU, 24 short runs
    python tuning/ablate.py --dataset photos --regime paper     # the paper's regime on real photos
    python tuning/ablate.py --gpus 8 --dataset koniq10k --data-root /data/koniq10k
    python tuning/ablate.py --runner processes ...  # no Ray: each run a local hyperiqa.train process
    python tuning/ablate.py --summarize ray_results/NAME   # re-summarise a finished experiment

Runs the fixed solver (legacy []), each `legacy` switch alone and all of them together ([all]), and
controls (the fixed solver with one config field changed: plain_head, plcc_loss), each with --seeds
seeds, at full budget (no ASHA, no early stopping), on Ray or (--runner processes) as local processes.
The design is paired: seed k of every variant uses the same split and the same training seed, so the
variants differ only in their switch or change. Writes the folder --out: curves.png, table.csv,
table.md, runs.csv and summary.md, which states what the numbers say (see tuning/ablation/stats.py).

Regimes (--regime): default = the dataset's own ablation (demo: sized for 10 minutes on 2 cores;
photos: photos_config(); others: the paper's defaults); paper (--dataset photos only) = photos_config()'s paper optimisation
(Adam, backbone LR 2e-5, head x10, weight decay 5e-4) over 4 epochs with no LR step, image-level train
curves, the defects that act between epochs and both controls, 2 seeds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

from hyperiqa.config import LEGACY_DEFECTS, TrainConfig
from hyperiqa.utils import UserError, run_cli
from tuning.ablation.stats import ALL, FIXED
from tuning.engine import experiment_folder, options
from tuning.presets import (
    DEFECT_VARIANTS,
    PAPER_REGIME,
    PAPER_REGIME_TRAIN_PATCHES,  # noqa: F401  (read as ablate.PAPER_REGIME_TRAIN_PATCHES)
    PAPER_VARIANTS,
    PHOTOS_VARIANTS,
    PRESET_ABLATIONS,
    PresetAblation,
)


@dataclass(frozen=True)
class Variant:
    """What a variant runs: the fixed solver's config with these legacy switches and these field changes."""

    legacy: tuple[str, ...] = ()
    changes: Mapping = field(default_factory=dict)  # a control's config fields, e.g. {"head": "plain"}
    about: str | None = None  # what a control is, for the summary's sentences

    def __post_init__(self):
        object.__setattr__(self, "changes", MappingProxyType(dict(self.changes)))


VARIANTS: dict[str, Variant] = {
    FIXED: Variant(),
    **{name: Variant((name,)) for name in LEGACY_DEFECTS},
    ALL: Variant(("all",)),
    # Controls: the fixed solver with one field changed, so a decline it shares with the fixed solver (or
    # does not) says whether the hyper network or the L1 loss is involved. `head` and `loss` are
    # TrainConfig fields of the model-options branch (hyperiqa/config.py).
    "plain_head": Variant(changes={"head": "plain"},
                          about="a plain regression head (global pooling + MLP) in place of the hyper network"),
    "plcc_loss": Variant(changes={"loss": "plcc"}, about="the loss 1 - PLCC over the batch in place of L1"),
}
assert [name for name, v in VARIANTS.items() if not v.changes] == DEFECT_VARIANTS  # presets.py's list
REGIMES = ("default", "paper")


RUNNERS = ("ray", "processes")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python tuning/ablate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_resource_flags(p, unit="run")
    d = options.add_data_flags(p, "what to train", "TrainConfig setting for every run, e.g. --set epochs=20 "
                                                   "(repeatable; not legacy or patience, which the ablation sets)")
    d.add_argument("--regime", choices=REGIMES, default="default",
                   help="default: the dataset's own ablation (demo: demo_config() resized for 10 minutes on 2 "
                        "cores; photos: photos_config() as it is; others: the paper's defaults); paper (--dataset "
                        f"photos only): photos_config() with {_changes(PAPER_REGIME)}, variants "
                        f"{', '.join(PAPER_VARIANTS)}, 2 seeds (default: default)")
    d.add_argument("--seeds", type=int, metavar="N",
                   help="seeds per variant; seed k is the base seed + k, for the split and the training of every "
                        "variant (default 3; 2 with --regime paper)")
    d.add_argument("--variants", metavar="A,B,...",
                   help=f"comma-separated variants to run, of {', '.join(VARIANTS)} (default: the defects, "
                        f"{', '.join(DEFECT_VARIANTS)}; for --dataset photos: {', '.join(PHOTOS_VARIANTS)})")
    o = p.add_argument_group("experiment, cluster and output")
    o.add_argument("--runner", choices=RUNNERS, default="ray",
                   help="ray: runs as Ray Tune trials; processes: each run a local `python -m hyperiqa.train` "
                        "process (no Ray needed), at most --max-concurrent at once (default: CPUs / "
                        "--cpus-per-run, or --gpus / --gpus-per-run), each pinned to one GPU with --gpus; "
                        "a --resume uses the runner the ablation started with (default ray)")
    o.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="with --runner processes: stop the runs still going after this many seconds and write "
                        "the folder from the epochs they reached (--resume continues them)")
    options.add_cluster_flags(o)
    options.add_stall_flag(o)
    o.add_argument("--name", help="experiment name (default <dataset>-ablation-<time>); with --resume: which one")
    o.add_argument("--resume", action="store_true",
                   help="continue the ablation --name (default: the newest under --storage-path): finished runs "
                        "are kept, unfinished ones continue from their checkpoints")
    o.add_argument("--out", metavar="DIR", help="result folder (default ablate_results/<name>)")
    o.add_argument("--summarize", metavar="EXPERIMENT_PATH",
                   help="write the result folder of a finished or interrupted ablation (storage path/name) and "
                        "exit; runs nothing")
    return p


def main(argv: list[str] | None = None, *, trial_fn=None) -> int:
    """The CLI; `trial_fn` replaces the training function of every run (tests only)."""
    args = build_parser().parse_args(argv)
    from tuning.engine import runner

    if args.summarize:
        runset = runner.load_runset(options.absolute(args.summarize), experiment_folder.ABLATION)
        if runner_of(runset) == "processes":
            from tuning.engine import local_runs

            return finish(runset, local_runs.collect(runset), args.out)
        return finish(runset, runner.collect_saved(runset), args.out)
    if args.time_limit is not None and args.time_limit <= 0:
        raise UserError(f"--time-limit {args.time_limit:g}: must be > 0 (seconds)")
    runset = resume_runset(args) if args.resume else new_runset(args)
    from tuning.engine.result_folder import check_export_dir

    check_export_dir(result_dir(runset, args.out), runset.experiment_path)  # refused now, not after the runs
    with experiment_folder.claim(runset.experiment_path, new=not args.resume):
        return _run(args, runset, trial_fn)


def cli() -> None:
    """The command line (`hyperiqa-ablate`): a user mistake is one line on stderr and exit code 2."""
    run_cli(main)


def _run(args, runset, trial_fn) -> int:
    from tuning.engine import node_cache, runner

    caches = node_cache.runset_configs(runset)
    if runner_of(runset) == "processes":
        node_cache.build_local(caches)  # before any run: the runs open it instead of queueing on its lock
        return run_processes(runset, args)
    if args.time_limit is not None:
        raise UserError("--time-limit: only with --runner processes (a Ray ablation stops with Ctrl-C and "
                        "continues with --resume)")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    from tuning.engine import launch

    runset = launch.start_for(runset, args, caches)
    start = time.monotonic()
    curves, interrupted = runner.execute(runset, resume=args.resume, **({"fn": trial_fn} if trial_fn else {}))
    print(f"\nablation {'interrupted' if interrupted else 'finished'} after {(time.monotonic() - start) / 60:.1f} min")
    code = finish(runset, curves, args.out)
    return 130 if interrupted else code  # Ctrl-C: the partial folder is written, the shell still sees the stop


def preset(args) -> PresetAblation:
    """The ablation defaults of --dataset and --regime."""
    if (args.dataset, args.regime) in PRESET_ABLATIONS:
        return PRESET_ABLATIONS[(args.dataset, args.regime)]
    if args.regime != "default":
        known = sorted({d for d, r in PRESET_ABLATIONS if r == args.regime})
        raise UserError(f"--regime {args.regime}: defined for --dataset {', '.join(known)} only, not {args.dataset}")
    return PresetAblation({}, DEFECT_VARIANTS)


def ablation_base(args, names: list[str] = ()) -> TrainConfig:
    """Paper defaults (or the dataset's preset and regime sized above), then --set; full budget."""
    base = options.dataset_config(args.dataset, args.data_root)
    base = TrainConfig.from_dict({**base.to_dict(), **preset(args).changes}, source=f"--regime {args.regime}")
    given = {a.partition("=")[0].strip() for a in args.set}
    for key, why in (("legacy", "each variant sets its own"), ("patience", "every run trains all its epochs")):
        if key in given:
            raise UserError(f"--set {key}: not allowed in an ablation ({why})")
    for name in names:
        clash = sorted(given & set(VARIANTS[name].changes))
        if clash:
            raise UserError(f"--set {clash[0]}: the variant {name} sets it; drop one of the two")
    return base.with_overrides(args.set, source="--set").replace(patience=0)


def variant_runs(base: TrainConfig, seeds: int, names: list[str],
                 table: Mapping[str, Variant] = VARIANTS) -> list[tuple[str, dict, TrainConfig]]:
    """(id, labels, config) for every variant and seed; seed k shares split and training seed across variants."""
    runs = []
    for k in range(seeds):
        seeded = base.replace(seed=base.seed + k)  # split_seed None follows seed: split k is the same everywhere
        for name in names:
            v = table[name]
            cfg = TrainConfig.from_dict({**seeded.to_dict(), **v.changes, "legacy": list(v.legacy)},
                                        source=f"ablation variant {name}")
            labels = {"variant": name, "seed": k}
            if v.changes:
                labels.update(changes=dict(v.changes), about=v.about)
            runs.append((f"{name}-s{k}", labels, cfg))
    return runs


def variant_names(args) -> list[str]:
    if not args.variants:
        return list(preset(args).variants)
    names = [n.strip() for n in args.variants.split(",")]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise UserError(f"--variants {unknown[0]!r}: allowed: {', '.join(VARIANTS)}")
    return names


def new_runset(args):
    from tuning.engine import runner

    seeds = args.seeds if args.seeds is not None else preset(args).seeds
    if seeds < 1:
        raise UserError(f"--seeds {seeds}: must be >= 1")
    if args.runner == "processes" and options.is_uri(args.storage_path):
        raise UserError(f"--storage-path {args.storage_path}: --runner processes writes local folders only")
    names = variant_names(args)
    base = ablation_base(args, names)
    joined = args.runner == "ray" and options.joins_cluster(args.address)
    where = runner.RunOptions(options.resources(args.gpus, args.gpus_per_trial, args.cpus_per_trial,
                                                args.max_concurrent, unit="run", joined=joined),
                              args.storage_path, args.name, args.out, options.stall_timeout(args.stall_timeout))
    runset = runner.make_runset("ablate", variant_runs(base, seeds, names), where, metric=base.selection_metric,
                                default_name=f"{args.dataset}-ablation",
                                settings={"seeds": seeds, "variants": names, "regime": args.regime,
                                          "runner": args.runner})
    existing = Path(runset.experiment_path)
    if experiment_folder.has_state(runset.experiment_path) or (existing / experiment_folder.RUNS_FILE).is_file():
        raise UserError(f"--name {runset.name}: {runset.experiment_path} already holds an experiment; add --resume "
                        "to continue it or choose another --name")
    return runset


def runner_of(runset) -> str:
    """The runner an ablation was started with (ablations from before --runner ran on Ray)."""
    return runset.settings.get("runner", "ray")


def run_processes(runset, args) -> int:
    """Run (or continue) the ablation as local processes; exit 1 if a run failed, after writing the folder."""
    from tuning.engine import local_runs

    start = time.monotonic()
    curves, failed = local_runs.execute(runset, resume=args.resume, time_limit=args.time_limit)
    print(f"\nablation finished after {(time.monotonic() - start) / 60:.1f} min")
    code = finish(runset, curves, args.out)
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)} (their logs: <run>/{local_runs.LOG} under "
              f"{runset.experiment_path}); the table covers the epochs they reached", file=sys.stderr)
        return 1
    return code


def resume_runset(args):
    from tuning.engine import runner

    kind = experiment_folder.ABLATION
    runset = experiment_folder.resume(args.storage_path, args.name, kind, runner.runset_builder(kind),
                                      instead="`python tuning/ablate.py --summarize {experiment}` summarises what "
                                              "its runs saved")
    runset = replace(runset, stall_timeout=options.stall_timeout(args.stall_timeout, runset.stall_timeout))
    return replace(runset, out_dir=options.absolute(args.out)) if args.out else runset


def finish(runset, curves: dict, out: str | None) -> int:
    """Write the folder, print the table, the answer and where everything is."""
    from tuning.ablation.report import text_table, write_folder

    out_dir = result_dir(runset, out)
    cfg = runset.runs[0]["config"]
    title = f"Ablation of the original's defects: {runset.name}"
    source = (f"Experiment `{runset.experiment_path}`: {len(runset.runs)} runs, {runset.settings.get('seeds', '?')} "
              f"seed(s) per variant, paired (seed k: same split and training seed in every variant).")
    stats, text = write_folder(out_dir, list(runset.runs), curves, title=title, source=source,
                               config_line=config_line(cfg), experiment=runset.experiment_path)
    print("\n" + text_table(stats) + "\n\n" + text.replace("**", "") + f"\n\nresults: {out_dir}")
    missing = [r["id"] for r in runset.runs if not curves.get(r["id"])]
    if missing or any(s.incomplete for s in stats):
        print(f"some runs are unfinished; continue with: {options.resume_command('ablate.py', runset.experiment_path)}")
    return 0


def result_dir(runset, out: str | None) -> str:
    return options.absolute(out) if out else runset.out_dir


def _changes(changes: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in changes.items())


def config_line(cfg: dict) -> str:
    weights = "pretrained" if cfg["pretrained"] or cfg["backbone_weights"] else "random-init"
    schedule = cfg["schedule"] + (f" (x{cfg['step_factor']:g} every {cfg['step_size']} epochs)"
                                  if cfg["schedule"] == "step" else "")
    return (f"{cfg['dataset']}, {cfg['backbone']} ({weights}), {cfg['epochs']} epochs, {schedule}, backbone LR "
            f"{cfg['backbone_lr']:g}, head x{cfg['lr_ratio']:g}, weight decay {cfg['weight_decay']:g}, batch "
            f"{cfg['batch_size']}, {cfg['train_patches']} x {cfg['patch_size']} px training patches per image, "
            f"{cfg['test_patches']} evaluation crops, selection on {cfg['selection_metric']}")

