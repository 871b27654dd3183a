"""TrainPatchSampler / EvalCrops: crops equal the cached pixels, exact normalisation, seeded reproducibility."""

import numpy as np
import pytest
import torch
from PIL import Image

from hyperiqa.data.cache import DecodedCache
from hyperiqa.data.patches import EvalCrops, TrainPatchSampler

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
P = 8


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(12, 9), (8, 8), (20, 11), (9, 16), (13, 13)]):
        paths.append(folder / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    return DecodedCache.build_or_open(paths, cache_dir=folder / "cache", short_side=None, resize_to=None,
                                      min_size=P, workers=1, log=lambda m: None)


INDICES = np.array([4, 0, 2, 3])
LABELS = np.array([10.0, 11.0, 12.0, 13.0, 14.0], np.float32)  # one per cache record


def _train(cache, **kw):
    opts = dict(patch_size=P, patches_per_image=5, batch_size=6, hflip=True, seed=3, device="cpu",
                mean=MEAN, std=STD)
    return TrainPatchSampler(cache, INDICES, LABELS, **{**opts, **kw})


def _expected(cache, record, y, x, flip):
    crop = cache.image(record)[y:y + P, x:x + P].astype(np.float64)
    if flip:
        crop = crop[:, ::-1]
    return ((crop / 255 - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1)


def test_train_crops_are_the_cached_pixels(cache):
    sampler = _train(cache)
    plan = sampler.plan(0)
    assert 0 < int(plan.flip.sum()) < len(plan.flip)  # both branches are exercised
    patches = torch.cat([x for x, _ in sampler.epoch(0)])
    labels = torch.cat([y for _, y in sampler.epoch(0)])
    assert patches.shape == (20, 3, P, P) and patches.dtype == torch.float32 and len(sampler) == 4
    for k in range(20):
        record = int(INDICES[plan.item[k]])
        want = _expected(cache, record, int(plan.y[k]), int(plan.x[k]), bool(plan.flip[k]))
        np.testing.assert_allclose(patches[k].numpy(), want, atol=1e-5)
        assert labels[k] == LABELS[record]


def test_normalisation_values(cache):
    x, _ = next(_train(cache, hflip=False).epoch(0))
    plan = _train(cache, hflip=False).plan(0)
    raw = cache.image(int(INDICES[plan.item[0]]))[int(plan.y[0]), int(plan.x[0])]  # top-left pixel
    assert x[0, :, 0, 0].tolist() == pytest.approx([(raw[c] / 255 - MEAN[c]) / STD[c] for c in range(3)], abs=1e-6)


def test_each_image_patches_per_image_times(cache):
    items = _train(cache, patches_per_image=7).plan(2).item
    assert np.bincount(items.numpy(), minlength=4).tolist() == [7, 7, 7, 7]


def test_epochs_reproducible_and_distinct(cache):
    a, b = _train(cache), _train(cache)
    for _ in a.epoch(0):  # a has run earlier epochs, b has not (a resumed run)
        pass
    first = torch.cat([x for x, _ in a.epoch(1)])
    np.testing.assert_array_equal(first.numpy(), torch.cat([x for x, _ in b.epoch(1)]).numpy())
    assert not torch.equal(first, torch.cat([x for x, _ in a.epoch(2)]))
    assert not torch.equal(first, torch.cat([x for x, _ in _train(cache, seed=4).epoch(1)]))


def test_batches_kept_by_the_caller_stay_intact(cache):
    sampler = _train(cache, batch_size=4)
    kept = list(sampler.epoch(5))  # host buffers are reused only once nothing refers to them
    again = [x.clone() for x, _ in sampler.epoch(5)]
    for (x, _), y in zip(kept, again, strict=True):
        assert torch.equal(x, y)


def test_channels_last_output(cache):
    x, _ = next(_train(cache, channels_last=True).epoch(0))
    ref, _ = next(_train(cache).epoch(0))
    assert x.is_contiguous(memory_format=torch.channels_last) and torch.equal(x, ref)


def test_eval_crops_fixed_and_complete(cache):
    def make():
        return EvalCrops(cache, INDICES, patch_size=P, crops_per_image=3, batch_size=5, seed=9, device="cpu",
                         mean=MEAN, std=STD)

    ev = make()
    x1, i1 = map(torch.cat, zip(*ev.batches()))
    x2, _ = map(torch.cat, zip(*ev.batches()))
    x3, _ = map(torch.cat, zip(*make().batches()))
    assert torch.equal(x1, x2) and torch.equal(x1, x3) and ev.num_images == 4 and len(ev) == 3
    assert i1.dtype == torch.int64 and i1.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    for k in range(12):
        record = int(INDICES[i1[k]])
        want = _expected(cache, record, int(ev.plan.y[k]), int(ev.plan.x[k]), False)
        np.testing.assert_allclose(x1[k].numpy(), want, atol=1e-5)
    assert len({(int(y), int(x)) for y, x in zip(ev.plan.y[6:9], ev.plan.x[6:9])}) > 1  # crops vary


def test_rejects_bad_inputs(cache):
    with pytest.raises(ValueError, match="smaller than the patch size"):
        _train(cache, patch_size=12)
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        next(_train(cache).epoch(-1))
    with pytest.raises(ValueError, match="one per cache record"):
        TrainPatchSampler(cache, INDICES, LABELS[:4], patch_size=P, patches_per_image=1, batch_size=2,
                          hflip=False, seed=0, device="cpu", mean=MEAN, std=STD)


def test_a_last_batch_of_one_patch_joins_the_batch_before_it(cache):
    sampler = _train(cache, patches_per_image=7, batch_size=9)  # 28 patches = 3 x 9 + 1
    batches = list(sampler.epoch(0))
    assert [len(y) for _, y in batches] == [9, 9, 10] and len(sampler) == 3
    plan = sampler.plan(0)
    assert np.bincount(plan.item.numpy(), minlength=4).tolist() == [7, 7, 7, 7]  # every patch, once
    for (a, b), flipped in zip(sampler.bounds, plan.flipped_per_batch):
        assert plan.flip[a:b].tolist() == [True] * flipped + [False] * (b - a - flipped)
    patches = torch.cat([x for x, _ in batches])
    for k in (0, 18, 27):
        record = int(INDICES[plan.item[k]])
        want = _expected(cache, record, int(plan.y[k]), int(plan.x[k]), bool(plan.flip[k]))
        np.testing.assert_allclose(patches[k].numpy(), want, atol=1e-5)
    assert [len(y) for _, y in _train(cache, batch_size=6).epoch(0)] == [6, 6, 6, 2]  # a rest of 2 stays
    assert [len(y) for _, y in _train(cache, patches_per_image=1, batch_size=3).epoch(0)] == [4]
