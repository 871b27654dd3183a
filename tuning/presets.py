"""The presets, side by side: what each workflow runs on a dataset that brings its own configuration.

    dataset   train (hyperiqa.config)   search (PRESET_SEARCHES)       ablation (PRESET_ABLATIONS)             confirmation
    demo      demo_config()             space demo, 12 epochs, rung 4,  DEMO_ABLATION: 6 epochs, the defects,   DEMO_SIZE: 6 epochs
                                        8 trials                        3 seeds
    photos    photos_config()           space photos, 8 epochs, rung 2, photos_config() as it is, 3 variants,   the searched configs
                                        8 trials                        3 seeds; --regime paper: PAPER_REGIME,
                                                                        5 variants, 2 seeds                     (every preset: baseline =
                                                                                                                the train preset)

The training configurations stay in hyperiqa/config.py (PRESETS: the solver never imports tuning); every
other size is here, with the reason it has. A dataset without a preset gets the paper's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from hyperiqa.config import LEGACY_DEFECTS
from tuning.ablation.stats import ALL, FIXED

# --- search -----------------------------------------------------------------------------------

# The demo space halves an epoch (3 patches per image; its cost: docs/demos.md) so that ASHA's rungs
# and the selected epoch fall on a finer grid. With a cosine schedule, 12 of them take timm's tiny
# test_resnet from random init to val SRCC ~0.87 (8: ~0.84), see search_spaces/demo.yaml.
DEMO_MAX_EPOCHS = 12
# The demo's first epochs from random init rank trials by how fast they start, not by where they end.
# bench/search_quality.py (8 trials of random search run to the end, seeds 0 and 1) found a trial's val
# SRCC after epoch 1 a poor predictor of its best and a good one after epoch 4, and ASHA with a grace
# period of 1 stopping the trial that ended best (the figures, and when they were measured:
# docs/search-quality.md). So the demo's first rung is at epoch 4 (two of demo_config()'s epochs).
# Other datasets (pretrained backbones; not measured here) keep max_epochs // 8.
DEMO_GRACE_PERIOD = 4
# The photos miniature (photos_config(): pretrained EfficientNet-Lite0, paper optimisation): sized from
# its epoch's cost on one core so that 8 trials of up to 8 epochs, two at a time, under ASHA with rungs
# at 2, 4 and 8 fit 20 minutes on 2 cores (the epoch's cost and the search's measured time: docs/demos.md).
PHOTOS_MAX_EPOCHS, PHOTOS_GRACE_PERIOD = 8, 2


@dataclass(frozen=True)
class PresetSearch:
    """What a search on a preset dataset (config.PRESETS) defaults to."""

    space: str
    max_epochs: int
    grace_period: int
    num_samples: int


PRESET_SEARCHES = {"demo": PresetSearch("demo", DEMO_MAX_EPOCHS, DEMO_GRACE_PERIOD, 8),
                   "photos": PresetSearch("photos", PHOTOS_MAX_EPOCHS, PHOTOS_GRACE_PERIOD, 8)}


# --- ablation -----------------------------------------------------------------------------------

# The original's defects: what the demo and other datasets run by default (the controls are asked for).
DEFECT_VARIANTS = [FIXED, *LEGACY_DEFECTS, ALL]
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
# - 6 epochs, not 8: 8 epochs of these runs would leave too little margin under 10 minutes beside Ray's
#   own processes; 6 points per curve still show a peak and a fall. The time measured at this size, and
#   when: docs/ablation.md.
# - one 32 px patch per training image and epoch, 2 fixed 32 px crops per evaluation image: the cheapest
#   that still learns. HyperIQA generates the target network's weights per sample, which costs the same
#   at any patch size, so the number of patches, not their size, sets the time.
# - the demo's backbone LR (1e-3) is kept: this backbone starts from random weights and needs it.
DEMO_ABLATION = dict(epochs=6, schedule="step", step_size=2, step_factor=0.1, lr_ratio=10.0, weight_decay=5e-4,
                     batch_size=16, patch_size=32, train_patches=1, test_patches=2)
# The photos ablation (--dataset photos): photos_config() as it is (the paper's optimisation shape on a
# pretrained EfficientNet-Lite0, 6 epochs, /10 after epochs 2 and 4). It must end within 20 minutes on 2
# cores: at a run's cost on one core (docs/ablation.md), two at once, 9 runs (5 rounds) fit and 24 do not.
# Hence 3 variants x 3 seeds: the fixed solver, every switch together, and the switch that stops the
# hyper network after epoch 1 (the original's most drastic defect). --variants runs any others.
PHOTOS_VARIANTS = [FIXED, "head_frozen_after_epoch1", ALL]
# The paper regime (--dataset photos --regime paper): photos_config()'s optimisation as it is (the paper's:
# Adam, backbone LR 2e-5, head x10, weight decay 5e-4, batch 16), over the first 4 epochs of the paper's
# schedule, whose first /10 step comes after epoch 6: these 4 epochs see no step, as the paper's first 6
# do, so a peak at epoch 1 cannot come from an LR step. train_eval_images adds image-level train SRCC
# after every epoch: 256 images x 2 crops of evaluation (forward only) against about 1,400 x
# PAPER_REGIME_TRAIN_PATCHES training patches (forward and backward), a few % of an epoch. Variants: the
# defects that act between epochs from epoch 1 on, all of them together, and the control for the hyper
# network (plain_head). plcc_loss, the other control, is left to --variants: it tests no cause of the four.
# train_patches: chosen before any variant ran, from the fixed solver alone, by the rule and probe runs in
# docs/paper-regime.md: the smallest value whose epoch-1 val SRCC is >= 80 % of the run's best (8), capped
# by what the 10 runs fit in 2 hours on 2 cores (4, about 370 Adam steps per epoch; the page has the cost).
PAPER_REGIME_TRAIN_PATCHES = 4
PAPER_REGIME = dict(train_patches=PAPER_REGIME_TRAIN_PATCHES, epochs=4, step_size=6, train_eval_images=256)
PAPER_VARIANTS = [FIXED, ALL, "optimizer_reset", "head_frozen_after_epoch1", "plain_head"]


@dataclass(frozen=True)
class PresetAblation:
    """An ablation's defaults for one dataset and regime."""

    changes: dict  # to the dataset's preset configuration
    variants: list
    seeds: int = 3


# (dataset, regime) -> its defaults; a dataset not listed: the paper's defaults, every defect, 3 seeds
PRESET_ABLATIONS = {("demo", "default"): PresetAblation(DEMO_ABLATION, DEFECT_VARIANTS),
                    ("photos", "default"): PresetAblation({}, PHOTOS_VARIANTS),
                    ("photos", "paper"): PresetAblation(PAPER_REGIME, PAPER_VARIANTS, seeds=2)}


# --- confirmation -------------------------------------------------------------------------------

# On the demo every configuration is confirmed at this size. Budget: `confirm.py <demo export> --splits 3`
# must end within 10 minutes on 2 cores: 2 configurations x 3 splits = 6 runs, 2 at a time on one
# thread each, so 3 rounds after Ray's start and the dataset checks. Half a demo trial (6 epochs, still of
# 3 patches and 2 crops) is the same for every configuration, so the comparison stays paired (the run
# and total times measured at this size, and when: docs/confirmation.md). The search's 12 epochs would
# not fit. --set epochs=12 confirms at the search's length.
DEMO_SIZE = {"epochs": 6, "train_patches": 3, "test_patches": 2}
