"""DecodedCache: decode once, correct RGB for every input mode, safe concurrent and failed builds."""

import os
import threading
import warnings

import numpy as np
import pytest
from PIL import Image

from hyperiqa.data import cache as cache_mod
from hyperiqa.data.cache import CacheBuildError, DecodedCache, cache_key, decode_image
from hyperiqa.utils import UserError


def _random_images(folder, sizes, seed=0):
    rng = np.random.default_rng(seed)
    paths = []
    for i, (w, h) in enumerate(sizes):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _count_decodes(monkeypatch, delay=0.0):
    calls = []
    original = cache_mod._decode

    def counting(path, *args):
        calls.append(path)
        if delay:
            threading.Event().wait(delay)
        return original(path, *args)

    monkeypatch.setattr(cache_mod, "_decode", counting)
    return calls


def _build(paths, tmp_path, **kw):
    opts = dict(cache_dir=tmp_path / "cache", short_side=None, resize_to=None, min_size=1, workers=1, log=lambda m: None)
    return DecodedCache.build_or_open(paths, **{**opts, **kw})


def test_each_image_decoded_once_and_stored_exactly(tmp_path, monkeypatch):
    paths = _random_images(tmp_path, [(12, 9), (7, 15), (10, 10)])
    calls = _count_decodes(monkeypatch)
    first = _build(paths, tmp_path)
    second = _build(paths, tmp_path)
    assert sorted(calls) == sorted(paths)  # the second call opened the cache without decoding
    assert first.folder == second.folder and len(second) == 3
    assert second.shapes.tolist() == [[9, 12], [15, 7], [10, 10]]
    for i, path in enumerate(paths):
        np.testing.assert_array_equal(second.image(i), np.asarray(Image.open(path)))
    assert not second.data.flags.writeable  # readers share the page cache through a read-only map


def test_concurrent_builders_build_once(tmp_path, monkeypatch):
    paths = _random_images(tmp_path, [(8, 8)] * 4)
    calls = _count_decodes(monkeypatch, delay=0.05)  # slow builds make the second thread wait on the lock
    results, logs = [], []
    threads = [threading.Thread(target=lambda: results.append(_build(paths, tmp_path, log=logs.append)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 4
    assert len(results) == 2 and results[0].folder == results[1].folder
    assert any("waiting" in m for m in logs)


def test_process_pool_build_matches_in_process_decode(tmp_path):
    paths = _random_images(tmp_path, [(30, 20), (20, 30)] * 9)  # 18 images: 3 chunks over 2 workers
    cache = _build(paths, tmp_path, short_side=10, workers=2)
    for i, path in enumerate(paths):
        np.testing.assert_array_equal(cache.image(i), decode_image(path, short_side=10))
    assert cache.shapes[0].tolist() == [10, 15] and cache.shapes[1].tolist() == [15, 10]


def test_modes_become_rgb(tmp_path):
    rgba = Image.new("RGBA", (2, 2), (255, 0, 0, 128))
    rgba.save(tmp_path / "rgba.png")
    Image.new("L", (2, 2), 100).save(tmp_path / "gray.png")
    pal = Image.new("P", (2, 2), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.save(tmp_path / "pal.png")
    Image.new("CMYK", (2, 2), (255, 0, 0, 0)).save(tmp_path / "cmyk.tif")
    Image.fromarray(np.full((2, 2), 257 * 100, np.uint16)).save(tmp_path / "g16.png")
    assert decode_image(str(tmp_path / "rgba.png"))[0, 0].tolist() == [255, 127, 127]  # alpha over white
    assert decode_image(str(tmp_path / "gray.png"))[0, 0].tolist() == [100, 100, 100]
    assert decode_image(str(tmp_path / "pal.png"))[0, 0].tolist() == [10, 200, 30]
    assert decode_image(str(tmp_path / "cmyk.tif"))[0, 0].tolist() == [0, 255, 255]
    assert decode_image(str(tmp_path / "g16.png"))[0, 0].tolist() == [100, 100, 100]  # scaled, not clipped


def test_exif_orientation_applied(tmp_path):
    arr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(arr).save(tmp_path / "rot.png", exif=exif)
    out = decode_image(str(tmp_path / "rot.png"))
    np.testing.assert_array_equal(out, np.rot90(arr, k=-1))


def test_resize_rules(tmp_path):
    (path,) = _random_images(tmp_path, [(200, 100)])
    assert decode_image(path, short_side=50).shape == (50, 100, 3)  # aspect kept
    assert decode_image(path, resize_to=(30, 20)).shape == (20, 30, 3)  # exact (width, height)


def test_truncated_images_named_and_no_cache_left(tmp_path):
    paths = _random_images(tmp_path, [(16, 16)] * 3)
    for i in (0, 2):
        jpg = tmp_path / f"bad{i}.jpg"
        Image.open(paths[i]).save(jpg, quality=95)
        jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
        paths[i] = str(jpg)
    with pytest.raises(CacheBuildError) as err:
        _build(paths, tmp_path)
    assert "bad0.jpg" in str(err.value) and "bad2.jpg" in str(err.value) and "img1" not in str(err.value)
    leftovers = [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="nope.png"):
        _build([str(tmp_path / "nope.png")], tmp_path)


def test_key_follows_files_and_rule(tmp_path):
    paths = _random_images(tmp_path, [(8, 8), (8, 8)])
    rule = {"short_side": None, "resize_to": None, "min_size": 1}
    key = cache_key(paths, rule)
    assert cache_key(paths, rule) == key
    assert cache_key(paths, {**rule, "short_side": 4}) != key
    assert cache_key(paths[:1], rule) != key
    st = os.stat(paths[0])
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    key_mtime = cache_key(paths, rule)
    assert key_mtime != key
    with open(paths[1], "ab") as fh:
        fh.write(b"\0")
    os.utime(paths[1], ns=(os.stat(paths[1]).st_atime_ns, os.stat(paths[1]).st_mtime_ns))
    assert cache_key(paths, rule) != key_mtime


def test_small_images_upscaled_with_one_counting_warning(tmp_path):
    paths = _random_images(tmp_path, [(20, 10), (40, 40), (100, 60)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = _build(paths, tmp_path, min_size=32)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 1 and messages[0].startswith("1 of 3 images")
    assert cache.shapes.tolist() == [[32, 64], [40, 40], [60, 100]]
