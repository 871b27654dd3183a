"""summary.md of an ablation: the answer in sentences generated from the numbers (tuning/ablation/stats.py)."""

from __future__ import annotations

import math

from tuning.ablation import stats as S
from tuning.ablation.stats import pm


def answer(stats: list[S.VariantStats], config: dict) -> list[str]:
    """Paragraphs: the symptom with every switch on, the fixed solver, each switch alone, the controls, the
    caveats."""
    by = {s.variant: s for s in stats}
    fixed, every = by.get(S.FIXED), by.get(S.ALL)
    singles = [s for s in stats if s.variant not in (S.FIXED, S.ALL) and not s.is_control]
    controls = [s for s in stats if s.is_control and s.variant not in (S.FIXED, S.ALL)]
    declining = sorted((s for s in singles if s.verdict in (S.DECLINES, S.FALLS_LATE)),
                       key=lambda s: -s.agg("drop")[0])
    out = [headline(every, fixed, declining, singles)]
    out += [describe(s, fixed) for s in ([every] if every else []) + ([fixed] if fixed else []) + declining]
    out += [describe(s, fixed) for s in singles if s not in declining and not s.no_effect]
    out += [f"`{s.variant}` had no effect in this configuration: {s.no_effect}." for s in singles if s.no_effect]
    out += [describe_control(s, fixed) for s in controls]
    return out + caveats(stats, config)


def headline(every, fixed, declining, singles) -> str:
    if every is None:
        symptom = "The `all` variant was not run, so the original's symptom is not measured here."
    elif every.verdict == S.DECLINES:
        symptom = (f"**The original's symptom is reproduced:** with every switch on, test SRCC peaks early "
                   f"(epoch {_median(every.values('peak_epoch'))}) and falls by {pm(*every.agg('drop'))}.")
    else:
        symptom = (f"**This configuration does not show the original's symptom:** with every switch on, "
                   f"test SRCC does not fall from an early peak by more than the seed-to-seed spread "
                   f"({every.verdict}).")
    if fixed is not None and fixed.verdict in (S.DECLINES, S.FALLS_LATE):
        symptom += " The fixed solver falls too, so not all of the decline here comes from the defects."
    acted = [s for s in singles if not s.no_effect]
    if not acted:
        return symptom
    if declining:
        names = ", ".join(f"`{s.variant}` ({pm(*s.agg('drop'))})" for s in declining)
        verb = "declines" if len(declining) == 1 else "decline"
        text = f" Alone, {len(declining)} of the {_switches(len(acted))} that acted {verb}: {names}"
        top = declining[0]
        if every is not None and every.verdict == S.DECLINES:
            share = top.agg("drop")[0] / every.agg("drop")[0]
            text += (f"; the largest single-switch drop, `{top.variant}`'s, is {share:.0%} of the drop with "
                     "every switch on")
        return symptom + text + "."
    return symptom + f" None of the {_switches(len(acted))} that acted declines on its own."


def describe_control(s: S.VariantStats, fixed: S.VariantStats | None) -> str:
    """A control (the fixed solver with a config field changed) in numbers, and whether its verdict is the
    fixed solver's: where they differ, the changed field is the only difference between the two."""
    changed = ", ".join(f"{k}={v}" for k, v in s.changes.items())
    name = f"`{s.variant}` ({s.about or changed}; a control, not a defect)"
    if s.no_effect:
        return f"{name} had no effect in this configuration: {s.no_effect}."
    text = describe(s, fixed, name=name)
    if fixed is None or S.NO_DATA in (s.verdict, fixed.verdict):
        return text
    if s.verdict == fixed.verdict:
        return text + f" Its verdict is the fixed solver's ({fixed.verdict})."
    return (text + f" Its verdict differs from the fixed solver's ({fixed.verdict}), and {changed} "
            f"{'is' if len(s.changes) == 1 else 'are'} all that differs between the two.")


def describe(s: S.VariantStats, fixed: S.VariantStats | None, name: str | None = None) -> str:
    """One variant in numbers: peak, final, drop against the seed spread, and the paired difference from fixed."""
    name = name or ("The fixed solver" if s.variant == S.FIXED else f"`{s.variant}`")
    if s.verdict == S.NO_DATA:
        return f"{name} reported no finite test SRCC."
    drop, spread = s.agg("drop")[0], s.spread
    if all(r.drop == 0 for r in s.runs.values()):
        text = f"{name} ends at its highest test SRCC in every seed ({pm(*s.agg('final'))}): no decline."
        return text + (" " + versus(s, fixed) if fixed is not None and s is not fixed else "")
    text = (f"{name} peaks at epoch {_epochs(s)} at {pm(*s.agg('peak'))} and ends at {pm(*s.agg('final'))}: "
            f"a drop of {pm(*s.agg('drop'))}")
    if math.isfinite(spread) and spread > 0:
        text += f", {drop / spread:.1f} times the seed-to-seed SD of its final test SRCC ({spread:.3f})"
    elif math.isfinite(spread):
        text += " (its final test SRCC is the same in every seed)"
    above = sum(d > S.MIN_DROP for d in s.values("drop"))
    if len(s.runs) > 1:
        text += f"; {above} of {len(s.runs)} seeds {'drops' if above == 1 else 'drop'} by more than {S.MIN_DROP:g}"
    text += {S.DECLINES: ". It declines after an early peak.", S.FALLS_LATE: ". It falls after a late peak.",
             S.NO_DECLINE: ". That is no decline."}.get(s.verdict, ".")
    if fixed is not None and s is not fixed:
        text += " " + versus(s, fixed)
    return text


def versus(s: S.VariantStats, fixed: S.VariantStats) -> str:
    parts = []
    for stat, what in (("test_at_val_best", "test SRCC at the val-best epoch"), ("final", "final test SRCC")):
        diffs = [d for d in S.paired(s, fixed, stat) if math.isfinite(d)]
        if not diffs:
            continue
        mean, sd = S.mean_sd(diffs)
        spread = f" ± {sd:.3f}" if math.isfinite(sd) else ""
        if round(mean, 3) == 0:
            parts.append(f"its {what} is the same on average (0.000{spread}; higher in {sum(d > 0 for d in diffs)}, "
                         f"lower in {sum(d < 0 for d in diffs)} of {len(diffs)} seeds)")
            continue
        direction = "lower" if mean < 0 else "higher"
        count = sum(d < 0 for d in diffs) if mean < 0 else sum(d > 0 for d in diffs)
        parts.append(f"its {what} is {abs(mean):.3f}{spread} {direction} ({direction} in {count} of {len(diffs)} seeds)")
    return ("Against the fixed solver, paired by seed, " + " and ".join(parts) + ".") if parts else ""


def caveats(stats: list[S.VariantStats], config: dict) -> list[str]:
    out = []
    seeds = max((len(s.runs) for s in stats), default=0)
    if seeds < 2:
        out.append(f"With {seeds} seed there is no seed-to-seed spread: a drop counts as a decline above "
                   f"{S.MIN_DROP} alone. Use --seeds 3 or more.")
    incomplete = sum(s.incomplete for s in stats)
    if incomplete:
        out.append(f"{incomplete} run(s) did not finish their {config['epochs']} epochs; their numbers cover the "
                   "epochs they reached (continue them with --resume).")
    if not config.get("pretrained") and not config.get("backbone_weights"):
        out.append(f"The backbone here (`{config['backbone']}`) starts from random weights, whereas the original's "
                   "symptom appears when fine-tuning an ImageNet-pretrained ResNet-50: this shows what each "
                   "switch does to a model trained from scratch; the question itself is answered by the run "
                   "on KonIQ-10k with the paper's configuration.")
    return out


def summary_markdown(stats: list[S.VariantStats], sentences: list[str], *, title: str, source: str,
                     config_line: str, table: str) -> str:
    lines = [f"# {title}", "", f"{source}", "", f"Configuration: {config_line}", "",
             "## What the data says", "", "(Generated from the numbers below.)", ""]
    lines += [f"{p}\n" for p in sentences]
    lines += ["## Test SRCC per variant", "",
              "Mean ± SD over seeds. Peak: the first epoch reaching the run's highest test SRCC. Drop: peak - "
              "final (last epoch). Test at val-best: the test SRCC of the epoch with the best val SRCC, what a run "
              "selected on validation reports. vs fixed: the per-seed difference from the fixed solver (same "
              "split and training seed), mean ± SD.", "", table, "",
              f"Rule: a variant *declines* when its mean drop exceeds {S.MIN_DROP} and {S.SPREAD_FACTOR:g} x the SD "
              f"over seeds of its final test SRCC, and every seed drops by more than {S.MIN_DROP}; *early* means its median peak epoch lies in the first half of "
              "the run. A switch has *no effect* when the runs reported the fixed solver's learning rates in "
              "every epoch (LR switches) or the fixed solver's numbers (the others)." + _controls_rule(stats), "",
              "![curves](curves.png)", "",
              "Files: `table.csv` and `table.md` (this table), `runs.csv` (every run's every epoch), `curves.png`.", ""]
    return "\n".join(lines)


def _controls_rule(stats: list[S.VariantStats]) -> str:
    controls = [f"`{s.variant}`" for s in stats if s.is_control]
    if not controls:
        return ""
    return (f" The controls ({', '.join(controls)}) change a configuration field instead of switching on a "
            "defect; they are paired with the fixed solver by seed like every variant.")


def _switches(n: int) -> str:
    return f"{n} switch" + ("" if n == 1 else "es")


def _epochs(s: S.VariantStats) -> str:
    values = [e for e in s.values("peak_epoch") if e is not None]
    if len(set(values)) == 1:
        return f"{values[0]}" + {1: "", 2: " in both seeds"}.get(len(values), f" in all {len(values)} seeds")
    return f"{', '.join(map(str, values))} (per seed)"


def _median(values: list) -> str:
    import statistics

    return f"{statistics.median([v for v in values if v is not None]):g}"
