"""Check a dataset before a long search: `python -m hyperiqa.data --dataset NAME --data-root PATH`.

Prints the number of images and groups, label ranges, split sizes (random split with val 0.1 and
test 0.2 of the groups, and the official split if any) and missing (with
--verify-images also unreadable) files. Exit status: 0 all good, 1 files missing or unreadable,
2 the dataset cannot be read at all (one-line error).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hyperiqa.config import TrainConfig
from hyperiqa.data.datasets import (
    DATASETS,
    GENERATED,
    DatasetError,
    DatasetSpec,
    load_dataset,
    missing_files,
    parse_options,
)
from hyperiqa.data.splits import check_split, choose_split
from hyperiqa.utils import run_cli

LISTED = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m hyperiqa.data", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, help=f"one of: {', '.join(DATASETS)}")
    parser.add_argument("--data-root", default=None, help=f"dataset folder (not needed for {' and '.join(GENERATED)})")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="reader option, e.g. --option csv=labels.csv (repeatable)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the random split shown (default 0)")
    parser.add_argument("--cache-dir", default=None, help=f"where {' and '.join(GENERATED)} are generated (default $HYPERIQA_CACHE or ~/.cache/hyperiqa)")
    parser.add_argument("--verify-images", action="store_true", help="decode every image with PIL")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


def unreadable_images(paths: list[str], workers: int = 0) -> dict[str, str]:
    """{path: why} of the images that do not decode, as the cache will decode them.

    Image.verify() only checks a file's structure: a JPEG cut off half-way passes it and then fails
    in the cache build, hours into a search's start. load() decodes every pixel, in one process per CPU
    this process may use (KonIQ-10k's 10,073 JPEGs took 403 s in one process on 2 shared cores).
    """
    import concurrent.futures as cf

    from hyperiqa.data.cache import decoder_workers, pool_context, undecodable

    chunks = [paths[i:i + 64] for i in range(0, len(paths), 64)]
    workers = min(decoder_workers(workers), len(chunks))
    if workers <= 1:
        return undecodable(paths)
    bad: dict[str, str] = {}
    with cf.ProcessPoolExecutor(workers, mp_context=pool_context()) as pool:
        for found in pool.map(undecodable, chunks):
            bad.update(found)
    return bad


def split_sizes(spec: DatasetSpec, seed: int) -> tuple[dict, dict]:
    """Sizes of the default random split (and the official one); errors are reported, not raised."""
    sizes, errors = {}, {}
    modes = ["random"] + (["official"] if spec.official_split is not None else [])
    for mode in modes:
        cfg = TrainConfig(dataset=spec.name, split=mode, split_seed=seed)
        try:
            split = choose_split(spec, cfg)
            sizes[mode] = split.sizes()
            check_split(spec, split, cfg)  # sizes shown, and why training would refuse them
        except DatasetError as exc:
            errors[mode] = str(exc)
    return sizes, errors


def summarize(args: argparse.Namespace) -> dict:
    spec = load_dataset(args.dataset, args.data_root, parse_options(args.option),
                        cache_dir=Path(args.cache_dir) if args.cache_dir else None, check_files=False)
    raw, labels = spec.raw_labels, spec.labels
    missing = missing_files(spec.paths)
    sizes, errors = split_sizes(spec, args.split_seed)
    summary = {
        "dataset": spec.name, "root": spec.root, "num_images": len(spec.records),
        "num_groups": len(set(spec.groups)), "by_reference": spec.by_reference,
        "direction": spec.direction, "raw_range": list(spec.raw_range),
        "raw_min": float(raw.min()), "raw_max": float(raw.max()),
        "label_min": float(labels.min()), "label_max": float(labels.max()),
        "default_short_side": spec.default_short_side,
        "splits": sizes.get("random", {}), "official_splits": sizes.get("official"),
        "split_errors": errors, "missing": missing,
    }
    if args.verify_images:
        present = set(missing)
        errors = unreadable_images([p for p in spec.paths if p not in present])
        summary["unreadable"], summary["unreadable_errors"] = list(errors), errors
    return summary


def print_text(s: dict) -> None:
    print(f"dataset     {s['dataset']}  ({s['root']})")
    print(f"images      {s['num_images']} in {s['num_groups']} groups"
          f"{' (reference images)' if s['by_reference'] else ''}")
    print(f"raw labels  {s['raw_min']:g} .. {s['raw_max']:g}  ({s['direction']} is better, "
          f"documented scale {s['raw_range'][0]:g} .. {s['raw_range'][1]:g})")
    print(f"training    {s['label_min']:g} .. {s['label_max']:g}  (higher is better)")
    print(f"resize      short side {s['default_short_side'] or 'kept'} by default")
    for mode, sizes in (("random", s["splits"]), ("official", s["official_splits"])):
        if sizes:
            print(f"split       {mode}: " + ", ".join(f"{name} {n}" for name, n in sizes.items()))
    for mode, error in s["split_errors"].items():
        print(f"split       {mode}: {error}")
    why = s.get("unreadable_errors", {})
    for key in ("missing", "unreadable"):
        if key in s:
            print(f"{key:<11} {len(s[key])}" + "".join(f"\n  {p}" + (f"  ({why[p]})" if p in why else "")
                                                   for p in s[key][:LISTED]) +
                  (f"\n  ... and {len(s[key]) - LISTED} more" if len(s[key]) > LISTED else ""))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = summarize(args)
    if args.json:
        print(json.dumps(summary))
    else:
        print_text(summary)
    return 1 if summary["missing"] or summary.get("unreadable") else 0


if __name__ == "__main__":
    run_cli(main)
