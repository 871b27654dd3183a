"""Train one configuration: python -m hyperiqa.train [--config cfg.yaml] [--dataset NAME] [--set k=v ...].

Writes into --out: config.yaml, split.csv, metrics.jsonl (one line per epoch), best/ (checkpoint of the
best epoch on cfg.selection_metric) and last/ (the latest epoch; continue with --resume).
Exit code: 0 when the run completes or stops early, 1 when it diverges, 2 on a user mistake.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hyperiqa import checkpoint as ckpt
from hyperiqa.config import PRESETS, TrainConfig
from hyperiqa.text import epoch_line, fmt
from hyperiqa.utils import UserError, atomic_write_text, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hyperiqa.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="TrainConfig as YAML or JSON (default: the paper's defaults; "
                   "with no --config: the demo's config for --dataset demo or none, photos_config() for --dataset photos)")
    p.add_argument("--dataset", metavar="NAME", help="dataset reader (koniq10k, livec, bid, live, csiq, tid2013, "
                   "kadid10k, spaq, csv, demo, photos); overrides the config's dataset")
    p.add_argument("--data-root", metavar="DIR", help="dataset folder; overrides the config's data_root")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one TrainConfig field (repeatable), e.g. --set backbone_lr=1e-4")
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/<dataset>-<timestamp>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last/ checkpoint (config from --out/config.yaml; "
                        "--set may change fields such as epochs)")
    return p


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """--config (or defaults / the demo config) + --dataset/--data-root + --set, validated strictly."""
    if args.resume:
        if args.config or args.dataset or args.data_root:
            raise UserError("--resume takes the config from --out/config.yaml; drop --config/--dataset/--data-root")
        cfg = TrainConfig.load(Path(args.out) / ckpt.CONFIG)
    elif args.config:
        cfg = TrainConfig.load(args.config)
    elif args.dataset is None or args.dataset in PRESETS:
        cfg = PRESETS[args.dataset or "demo"]()
    else:
        cfg = TrainConfig()
    changes = {}
    if args.dataset:
        changes["dataset"] = args.dataset
    if args.data_root:
        changes["data_root"] = str(Path(args.data_root).expanduser().resolve())
    if changes:
        cfg = TrainConfig.from_dict({**cfg.to_dict(), **changes}, source="--dataset/--data-root")
    return cfg.with_overrides(args.overrides, source="--set") if args.overrides else cfg


def summary(cfg: TrainConfig) -> str:
    return (f"dataset {cfg.dataset} ({cfg.data_root or 'generated'}) | {cfg.backbone} "
            f"{'pretrained' if cfg.pretrained else 'random init'}, frozen_stages {cfg.frozen_stages}, {cfg.head} head "
            f"| patch "
            f"{cfg.patch_size}, {cfg.train_patches}/{cfg.test_patches} train/test patches, batch {cfg.batch_size} | "
            f"{cfg.optimizer} backbone_lr {cfg.backbone_lr:g} x{cfg.lr_ratio:g} head, wd {cfg.weight_decay:g}, "
            f"{cfg.loss} loss | "
            f"{cfg.schedule} schedule, {cfg.epochs} epochs, warmup {cfg.warmup_epochs:g} | select "
            f"{cfg.selection_metric}, patience {cfg.patience} | seed {cfg.seed}, device {cfg.device}"
            + (f" | legacy {', '.join(cfg.legacy)} (the original's defects)" if cfg.legacy else ""))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.resume and not args.out:
        raise UserError("--resume needs --out DIR (the run folder to continue)")
    cfg = resolve_config(args)
    out = Path(args.out or f"runs/{cfg.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    last = out / "last"
    if args.resume and not (last / ckpt.TRAINER_STATE).is_file():
        raise UserError(f"--resume: {last} holds no checkpoint to continue from")
    if not args.resume and (last / ckpt.TRAINER_STATE).is_file():
        raise UserError(f"--out {out} already holds a run; use --resume to continue it or choose another --out")
    print(summary(cfg), flush=True)
    from hyperiqa.solver import Solver  # after argument checks: importing torch models is slow

    solver = Solver(cfg, log=lambda msg: print(msg, flush=True))
    if args.resume:
        solver.load_checkpoint(last)
        print(f"resumed from {last} after epoch {solver.epoch}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / ckpt.CONFIG)
    from hyperiqa.data.splits import save_split

    save_split(out / ckpt.SPLIT, solver.data.spec, solver.data.split)
    print(f"run folder {out.resolve()}", flush=True)
    for m in solver.epochs():
        print(epoch_line(m, cfg.epochs), flush=True)
        if m["best_epoch"] == m["epoch"]:
            solver.save_checkpoint(out / "best", m)
        solver.save_checkpoint(last, m)
        # Rewritten from the solver's history (part of its state), so it always matches last/ after a crash.
        atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in solver.history))
    return report(solver, out)


def report(solver, out: Path) -> int:
    name = solver.cfg.selection_metric
    last = solver.history[-1] if solver.history else {}
    if last.get("status") == "diverged":
        print(last.get("message"), flush=True)
    if solver.best is None:
        print(f"no epoch produced a finite {name}; nothing saved in {out / 'best'}", flush=True)
    else:
        b = solver.best
        print(f"best epoch {solver.best_epoch}: {name} {b[name]:.4f} | val srcc {fmt(b['val_srcc'])} plcc "
              f"{fmt(b['val_plcc'])} | test srcc {fmt(b['test_srcc'])} plcc {fmt(b['test_plcc'])} "
              f"krcc {fmt(b['test_krcc'])} rmse {fmt(b['test_rmse'])} | checkpoint {out / 'best'}", flush=True)
    return 1 if last.get("status") == "diverged" else 0


if __name__ == "__main__":
    run_cli(main)
