"""The GPU path at its boundaries, on the CPU: indexed devices, memory caps, the device-cache budget,
checkpoints that load on any machine, optimizer state layout after a resume, fp32 scores under bf16."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from hyperiqa import checkpoint as ckpt
from hyperiqa import runtime
from hyperiqa.data.cache import DecodedCache
from hyperiqa.models import HyperIQA
from hyperiqa.solver import Solver
from hyperiqa.utils import UserError
from tests.test_cli import cli

GiB = 2**30


def quiet(*_):
    pass


@pytest.mark.parametrize("name", ["auto", "cuda"])
def test_auto_and_cuda_resolve_to_an_indexed_device_that_torch_accepts(name):
    device = runtime.resolve_device(name, cuda_available=True, current_index=0)
    assert device == torch.device("cuda", 0)
    # torch's own argument check of set_per_process_memory_fraction: an index is required.
    assert torch._utils._get_device_index(device, optional=False) == 0
    with pytest.raises(ValueError, match="specified index"):
        torch._utils._get_device_index(torch.device("cuda"), optional=False)


def test_device_names_without_cuda_and_mistakes():
    assert runtime.resolve_device("auto", cuda_available=False) == torch.device("cpu")
    assert runtime.resolve_device("cuda:1", cuda_available=True, current_index=0) == torch.device("cuda", 1)
    with pytest.raises(UserError, match="sees no CUDA device"):
        runtime.resolve_device("cuda", cuda_available=False)
    with pytest.raises(UserError, match="allowed values are auto, cpu, cuda or cuda:N"):
        runtime.resolve_device("gpu0", cuda_available=True)


def test_memory_cap_gets_the_indexed_device(monkeypatch):
    calls = []

    def set_fraction(fraction, device):  # the real function's first step: torch's device-index check
        calls.append((fraction, torch._utils._get_device_index(device, optional=False)))

    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", set_fraction)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=80 * GiB))
    device = runtime.resolve_device("cuda", cuda_available=True, current_index=0)
    runtime.apply_runtime(device, num_threads=0, gpu_memory_fraction=0.5)
    assert calls == [((40 - runtime.CUDA_CONTEXT_ALLOWANCE_GIB) / 80, 0)]  # the share less the context
    assert torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False


@pytest.mark.parametrize("gb, fraction, total_gib, expected_gib", [
    (8.0, None, 80, 8.0),     # a whole H100: the configured 8 GB
    (8.0, 0.5, 40, 4.85),     # two trials on a 40 GB card: a quarter of each one's 20 GB less 0.6 (context)
    (8.0, 0.25, 80, 4.85),    # four trials on an 80 GB card
    (8.0, None, 16, 4.0),     # a small card on its own
    (0.0, 0.5, 80, 0.0),      # off by configuration
])
def test_device_cache_budget_is_capped_by_the_process_share(gb, fraction, total_gib, expected_gib):
    assert runtime.device_cache_budget(gb, fraction, total_gib * GiB) == int(expected_gib * GiB)


def test_prepare_data_asks_for_the_budget_with_the_trials_memory_share(tiny_cfg, monkeypatch):
    import hyperiqa.data as data

    asked = []
    monkeypatch.setattr(data, "device_cache_bytes", lambda *args: asked.append(args) or 0)
    cfg = tiny_cfg(gpu_memory_fraction=0.5, device_cache_gb=3.0)
    data.prepare_data(cfg, device="cpu", mean=(0.5,) * 3, std=(0.5,) * 3, log=quiet)
    assert asked == [(torch.device("cpu"), 3.0, 0.5)]


@pytest.fixture(scope="module")
def gpu_trained_checkpoint(tmp_path_factory, tiny_cfg):
    """A checkpoint as a shared-GPU trial would have left it before runtime fields were reset."""
    solver = Solver(tiny_cfg(epochs=1, num_threads=1, gpu_memory_fraction=0.5), log=quiet)
    metrics = next(solver.epochs())
    folder = tmp_path_factory.mktemp("gpu_ckpt") / "checkpoint"
    solver.save_checkpoint(folder, metrics)
    return folder, metrics


def test_checkpoints_store_no_runtime_settings(gpu_trained_checkpoint):
    folder, _ = gpu_trained_checkpoint
    saved = yaml.safe_load((folder / ckpt.CONFIG).read_text())
    assert (saved["device"], saved["num_threads"], saved["gpu_memory_fraction"]) == ("auto", 0, None)
    state = ckpt.load_trainer_state(folder)
    assert (state["config"]["device"], state["config"]["gpu_memory_fraction"]) == ("auto", None)


def test_evaluate_predict_and_train_accept_a_checkpoint_from_a_gpu_machine(gpu_trained_checkpoint, tmp_path,
                                                                            tiny_dataset, capsys):
    from hyperiqa import evaluate, predict, train

    folder, metrics = gpu_trained_checkpoint
    foreign = tmp_path / "from_gpu"
    foreign.mkdir()
    for item in folder.iterdir():
        (foreign / item.name).write_bytes(item.read_bytes())
    config = yaml.safe_load((folder / ckpt.CONFIG).read_text())
    # What a checkpoint from a shared-GPU trial said before this fix: evaluating it on a CPU failed.
    config.update(device="cuda", gpu_memory_fraction=0.5, num_threads=1)
    (foreign / ckpt.CONFIG).write_text(yaml.safe_dump(config))
    code, out, err = cli(evaluate.main, ["--checkpoint", str(foreign), "--split", "val", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["srcc"] == pytest.approx(metrics["val_srcc"], abs=1e-6)
    code, out, err = cli(predict.main, ["--checkpoint", str(foreign), str(tiny_dataset / "g0_l0.png")], capsys)
    assert code == 0, err
    assert out.splitlines()[0] == "path,score" and np.isfinite(float(out.splitlines()[1].split(",")[1]))
    code, out, err = cli(train.main, ["--config", str(folder / ckpt.CONFIG), "--out", str(tmp_path / "again")],
                         capsys)
    assert code == 0, err
    assert "epoch 1/1" in out


def test_resumed_optimizer_state_has_the_parameters_layout(gpu_trained_checkpoint, tiny_cfg):
    """A CPU (contiguous) checkpoint resumed into a channels_last model: fused CUDA Adam needs equal strides."""
    folder, _ = gpu_trained_checkpoint
    saved = ckpt.load_trainer_state(folder)["optimizer"]["state"]
    solver = Solver(tiny_cfg(epochs=2), log=quiet)
    solver.model.to(memory_format=torch.channels_last)
    solver.load_checkpoint(folder)
    checked = 0
    for index, param in enumerate(p for g in solver.optimizer.param_groups for p in g["params"]):
        state = solver.optimizer.state[param]
        for key in ("exp_avg", "exp_avg_sq"):
            assert state[key].stride() == param.stride(), (index, key)
            assert torch.equal(state[key], saved[index][key])
        checked += param.dim() == 4 and not param.is_contiguous()
    assert checked > 5  # the conv weights really are channels_last
    next(solver.epochs())  # and training continues


def test_scores_are_computed_in_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    model = HyperIQA("resnet10t", patch_size=64).eval()
    with torch.no_grad():
        model.generator.b_fcs[-1].bias.fill_(80.0)  # raw MOS-scale outputs, as with label_norm none
        x = torch.randn(8, 3, 64, 64)
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(x)
    assert mixed.dtype == torch.float32
    # bf16 has a step of 0.5 at 64-128: a bf16 target net gave 80.0 for every image here.
    assert (mixed - reference).abs().max() < 0.02
    assert len(set(mixed.tolist())) == len(mixed)


@pytest.mark.filterwarnings("ignore:.*upscaled to fit a patch")
def test_predict_resizes_exactly_as_the_training_cache(tmp_path):
    from hyperiqa import inference as predict

    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (70, 101, 3), dtype=np.uint8)).save(path)
    for short_side, resize_to, patch in ((48, None, 32), (None, (40, 30), 32), (None, None, 80)):
        cache = DecodedCache.build_or_open([path], cache_dir=tmp_path / "cache", short_side=short_side,
                                           resize_to=resize_to, min_size=patch, workers=1, log=quiet)
        image = predict.load_image(path, patch=patch, short_side=short_side, resize_to=resize_to)
        assert np.array_equal(image, cache.image(0)), (short_side, resize_to, patch)
