"""Which of the original solver's defects makes test SRCC peak at epoch 1 and then fall? Measure it.

    python tuning/ablate.py                     # the demo: generated dataset, CPU, 24 short runs
    python tuning/ablate.py --gpus 8 --dataset koniq10k --data-root /data/koniq10k
    python tuning/ablate.py --summarize ray_results/NAME   # re-summarise a finished experiment

Runs the fixed solver (legacy []), each `legacy` switch alone and all of them together ([all]), each
with --seeds seeds, as full-budget Ray runs (no ASHA, no early stopping). The design is paired: seed k
of every variant uses the same split and the same training seed, so the variants differ only in their
switch. Writes the folder --out: curves.png, table.csv, table.md, runs.csv and summary.md, which states
what the numbers say (see tuning/ablation_stats.py for the rules).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tuning` and `hyperiqa` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import os
import time

from hyperiqa.config import LEGACY_DEFECTS, TrainConfig
from hyperiqa.utils import UserError, run_cli
from tuning import experiment_folder, options
from tuning.ablation_stats import ALL, FIXED

VARIANTS = {FIXED: [], **{name: [name] for name in LEGACY_DEFECTS}, ALL: ["all"]}
# The demo ablation (no arguments): demo_config() with these changes. 8 variants x 3 seeds = 24 runs, two
# at a time, must end within 10 minutes on 2 cores, Ray's start-up included. Why this size:
# - the paper's optimisation shape: Adam, head LR x10, weight decay 5e-4, and two /10 steps, here after 2
#   and 4 of 6 epochs (the paper: after 6 and 12 of 16), so that backbone_lr_constant, lr_one_epoch_late,
#   optimizer_reset and head_frozen_after_epoch1 act where they act in a real run: between epochs, before
#   and after each step. lr_ratio_reset acts from epoch 11 only, and 24 runs of 11 epochs do not fit:
#   the summary reports it as having no effect, read from the LRs the runs reported.
# - batch 16 (39 Adam steps per epoch): the switches act at epoch boundaries, so epoch 1 must train
#   enough to matter, as it does on KonIQ (about 2,000 steps). At batch 32 the model had learned nothing
#   measurable after epoch 1 (val SRCC about 0).
# - 6 epochs, not 8: 8 epochs of these runs (about 36 s of one core each, estimated) would leave too little
#   margin under 10 minutes beside Ray's own processes; 6 points per curve still show a peak and a fall.
#   Measured at this size: 8.4 minutes on a quiet 2-core VM (README, "Why the first epoch was best").
# - one 32 px patch per training image and epoch, 2 fixed 32 px crops per evaluation image: the cheapest
#   that still learns. HyperIQA generates the target network's weights per sample, which costs the same
#   at any patch size, so the number of patches, not their size, sets the time.
# - the demo's backbone LR (1e-3) is kept: this backbone starts from random weights and needs it.
DEMO_ABLATION = dict(epochs=6, schedule="step", step_size=2, step_factor=0.1, lr_ratio=10.0, weight_decay=5e-4,
                     batch_size=16, patch_size=32, train_patches=1, test_patches=2)
# The photos ablation (--dataset photos): photos_config() as it is (the paper's optimisation shape on a
# pretrained EfficientNet-Lite0, 6 epochs, /10 after epochs 2 and 4). It must end within 20 minutes on 2
# cores: a run costs about 6 x 32 s of one core, two run at once, so 9 runs (5 rounds) fit and 24 do not.
# Hence 3 variants x 3 seeds: the fixed solver, every switch together, and the switch that stops the
# hyper network after epoch 1 (the original's most drastic defect). --variants runs any others.
PHOTOS_VARIANTS = [FIXED, "head_frozen_after_epoch1", ALL]
# dataset -> (changes to its preset configuration, variants run by default)
PRESET_ABLATIONS = {"demo": (DEMO_ABLATION, list(VARIANTS)), "photos": ({}, PHOTOS_VARIANTS)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python tuning/ablate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_resource_flags(p, unit="run")
    d = options.add_data_flags(p, "what to train", "TrainConfig setting for every run, e.g. --set epochs=20 "
                                                   "(repeatable; not legacy or patience, which the ablation sets)")
    d.add_argument("--seeds", type=int, default=3, metavar="N",
                   help="seeds per variant; seed k is the base seed + k, for the split and the training of every "
                        "variant (default 3)")
    d.add_argument("--variants", metavar="A,B,...",
                   help=f"comma-separated variants to run (default: all of them, {', '.join(VARIANTS)}; for "
                        f"--dataset photos: {', '.join(PHOTOS_VARIANTS)})")
    o = p.add_argument_group("experiment, cluster and output")
    options.add_cluster_flags(o)
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
    from tuning import runner

    if args.summarize:
        runset = runner.load_runset(options.absolute(args.summarize))
        try:
            curves = runner.collect(runset)
        except ValueError as exc:  # the runs file was written, but Ray saved no experiment state yet
            raise UserError(f"--summarize {args.summarize}: no Ray Tune experiment state there ({exc})") from None
        return finish(runset, curves, args.out)
    runset = resume_runset(args) if args.resume else new_runset(args)
    from tuning.export import check_export_dir

    check_export_dir(result_dir(runset, args.out), runset.experiment_path)  # refused now, not after the runs
    with experiment_folder.claim(runset.experiment_path, new=not args.resume):
        return _run(args, runset, trial_fn)


def _run(args, runset, trial_fn) -> int:
    from tuning import runner

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    from tuning import launch

    launch.start_ray(args.address, args.dashboard_host, args.dashboard_port)
    start = time.monotonic()
    curves, interrupted = runner.execute(runset, resume=args.resume, **({"fn": trial_fn} if trial_fn else {}))
    print(f"\nablation {'interrupted' if interrupted else 'finished'} after {(time.monotonic() - start) / 60:.1f} min")
    code = finish(runset, curves, args.out)
    return 130 if interrupted else code  # Ctrl-C: the partial folder is written, the shell still sees the stop


def ablation_base(args) -> TrainConfig:
    """Paper defaults (or the dataset's preset sized above), then --set; full budget."""
    plain = argparse.Namespace(dataset=args.dataset, data_root=args.data_root, set=[])
    base = options.base_config(plain)
    if args.dataset in PRESET_ABLATIONS:
        base = base.replace(**PRESET_ABLATIONS[args.dataset][0])
    given = {a.partition("=")[0].strip() for a in args.set}
    for key, why in (("legacy", "each variant sets its own"), ("patience", "every run trains all its epochs")):
        if key in given:
            raise UserError(f"--set {key}: not allowed in an ablation ({why})")
    return base.with_overrides(args.set, source="--set").replace(patience=0)


def variant_runs(base: TrainConfig, seeds: int, names: list[str]) -> list[tuple[str, dict, TrainConfig]]:
    """(id, labels, config) for every variant and seed; seed k shares split and training seed across variants."""
    runs = []
    for k in range(seeds):
        seeded = base.replace(seed=base.seed + k)  # split_seed None follows seed: split k is the same everywhere
        for name in names:
            runs.append((f"{name}-s{k}", {"variant": name, "seed": k}, seeded.replace(legacy=VARIANTS[name])))
    return runs


def new_runset(args):
    from tuning import runner

    if args.seeds < 1:
        raise UserError(f"--seeds {args.seeds}: must be >= 1")
    names = PRESET_ABLATIONS[args.dataset][1] if args.dataset in PRESET_ABLATIONS else list(VARIANTS)
    if args.variants:
        names = [n.strip() for n in args.variants.split(",")]
        unknown = [n for n in names if n not in VARIANTS]
        if unknown:
            raise UserError(f"--variants {unknown[0]!r}: allowed: {', '.join(VARIANTS)}")
    base = ablation_base(args)
    runset = runner.make_runset("ablate", variant_runs(base, args.seeds, names), args, metric=base.selection_metric,
                                default_name=f"{args.dataset}-ablation", settings={"seeds": args.seeds,
                                                                                   "variants": names})
    return runset


def resume_runset(args):
    import dataclasses

    from tuning import runner

    storage = options.writable_storage(args.storage_path)
    name = args.name or _newest(storage)
    runset = runner.load_runset(f"{storage.rstrip('/')}/{name}")
    experiment_folder.check_resumable(runset.experiment_path, "`python tuning/ablate.py --summarize "
                                      f"{runset.experiment_path}` summarises what its runs saved")
    print(f"resuming {runset.experiment_path} with its saved settings (other flags are ignored)")
    return dataclasses.replace(runset, out_dir=options.absolute(args.out)) if args.out else runset


def _newest(storage: str) -> str:
    from tuning.runner import RUNS_FILE

    if options.is_uri(storage):
        raise UserError("--resume with a remote --storage-path needs --name")
    found = sorted(Path(storage).glob(f"*/{RUNS_FILE}"), key=lambda p: p.stat().st_mtime)
    found = [p for p in found if '"kind": "ablate"' in p.read_text()]
    if not found:
        raise UserError(f"--resume: no ablation under {storage}; give --storage-path and --name")
    return found[-1].parent.name


def finish(runset, curves: dict, out: str | None) -> int:
    """Write the folder, print the table, the answer and where everything is."""
    from tuning.ablation_report import text_table, write_folder

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


def config_line(cfg: dict) -> str:
    weights = "pretrained" if cfg["pretrained"] or cfg["backbone_weights"] else "random-init"
    schedule = cfg["schedule"] + (f" (x{cfg['step_factor']:g} every {cfg['step_size']} epochs)"
                                  if cfg["schedule"] == "step" else "")
    return (f"{cfg['dataset']}, {cfg['backbone']} ({weights}), {cfg['epochs']} epochs, {schedule}, backbone LR "
            f"{cfg['backbone_lr']:g}, head x{cfg['lr_ratio']:g}, weight decay {cfg['weight_decay']:g}, batch "
            f"{cfg['batch_size']}, {cfg['train_patches']} x {cfg['patch_size']} px training patches per image, "
            f"{cfg['test_patches']} evaluation crops, selection on {cfg['selection_metric']}")


if __name__ == "__main__":
    run_cli(main)
