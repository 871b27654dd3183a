"""GPU acceptance check: the CUDA paths of the solver and the CLIs, in one command that ends within --budget.

On a machine with one H100/H200 (run it as ONE call with a timeout of about 540 s):

    python bench/gpu_check.py                  # writes $OUT/gpu_check.json (or ./gpu_check.json; --out FILE)
    python bench/gpu_check.py --cpu-smoke      # the same checks, tiny, on the CPU (under 2 minutes, 2 cores)

It needs torch, timm and this repository only (no Ray, no internet: backbones are randomly initialised).
It generates 300 KonIQ-layout 1024x768 JPEGs, then runs each check in its own process, so that a crash,
a hang or a poisoned CUDA context fails that check only. One line per check:
`PASS (x) ...` with the measured numbers, `FAIL (x) ...: reason`, or `SKIP (x) ...: reason` when the time
budget (--budget, default 500 s from the start) cannot fit it. The JSON holds every number, and the
stderr tail of each failed check. Exit code 0 only if every check passed.

  (a) ResNet-50, patch 224, batch 96, bf16 autocast, channels_last, fused Adam, TrainConfig device "cuda"
      (the literal string, no index): 2 epochs (the first pays for cudnn autotuning) with val/test
      evaluation, then a checkpoint. Train and eval patches/s, peak memory. PASS: finite loss, finite
      val/test SRCC and PLCC.
  (b) Two processes at gpu_memory_fraction 0.5 at the same time, each training for a fixed window after
      a warm-up epoch, then evaluating. PASS: both finish with a finite loss, max_memory_reserved stays
      under the cap (0.5 x total memory less hyperiqa.runtime's CUDA-context allowance), and the fraction
      torch reports in effect is that cap's (where torch can report it). Also where each process kept its
      images (the device-cache budget it got).
  (g) From (a) and (b), no new process: the GPU memory a process uses outside torch's allocator (CUDA
      context, cuBLAS/cuDNN kernels; the card's used memory less the allocator's reservation, after (a)'s
      training, alone on the card) against CUDA_CONTEXT_ALLOWANCE_GIB, and the AMP dtype (a) trained
      with against its compute capability (bf16 from 8.0, else fp32). PASS: within the allowance, and
      the expected dtype.
  (c) Resume on CUDA from a checkpoint written on the CPU (the fused-Adam-after-resume stride bug: Adam
      state saved contiguous, parameters channels_last). One CPU epoch of a small backbone, save; a CUDA
      solver loads it, makes one fused Adam step that is compared with a reference single-tensor Adam
      step from the same state and gradients, then trains one more epoch. PASS: Adam is still fused after
      the load (param_groups[0]["fused"], the group in use), the steps agree (every element within 1e-3 of
      the tensor's largest update plus 4 ulps) and the loss is finite.
  (d) compile: true (ResNet-50 as in (a), but 32 patches per image and eval batch 250, so that every
      batch has one shape: a partial last batch would add a dynamic-shape recompile), 2 epochs: compile
      and warm-up time (epoch 1 minus epoch 2, both with evaluation) reported apart from the steady
      throughput of epoch 2. PASS: finite loss and metrics.
  (e) The CLIs on (a)'s checkpoint, as subprocesses, compared image by image (relative tolerance
      PER_IMAGE_RTOL; an SRCC of near-tied random-init scores could swap ranks under cudnn.benchmark):
      `python -m hyperiqa.evaluate --split test --predictions CSV` against (a)'s in-process test scores;
      the same for a copy whose config.yaml says device: cuda and gpu_memory_fraction: 0.5 (an exported
      checkpoint); and `python -m hyperiqa.predict --device cuda` against evaluate on a copy whose images
      are resized to the patch size (every crop is then the whole image, so both score the same pixels).
  (f) `python bench/throughput.py --quick` with what is left of the budget; its table is printed and its
      JSON written beside the report (gpu_check_throughput.json). SKIP when too little time is left, or
      when the budget cuts it (what it had printed is shown and kept).

Checks run in the order a, b, g, c, e, d, f. Estimated on an H200 (not yet measured): images ~5 s, a ~25 s,
b ~35 s, g 0 s, c ~20 s, e ~45 s (3 evaluations, one builds a 224x224 cache, and a predict), d ~60-150 s
(inductor compiles a training and an inference graph), so a-e take 3-4 minutes; f gets what is left (throughput.py --quick is sized for ~4 minutes; if cut, its
partial output is kept). For a run under 5 minutes in total, pass --budget 290: f is then skipped.
--cpu-smoke: test_resnet at patch 64 on 16 images, device cpu, 1 thread per process; (b) runs without a
memory cap, (g) checks only the AMP dtype (fp32), (c) with the CPU's Adam on both sides, (d) with torch.compile's aot_eager backend (inductor's
C++ build takes minutes on 2 cores), (e) with an exported config saying device auto, and (f) runs
throughput.py with tiny CPU arguments; each such line starts with [CPU form: ...].
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import multiprocessing as mp
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

MARK = "@@gpu_check "  # a worker's result line on stdout

# Sizes of each mode. Both share one generated folder and one decoded cache (same patch size).
SIZES = {
    "cuda": dict(images=300, device="cuda", backbone="resnet50", patch=224, batch=96, eval_batch=256,
                 train_patches=25, test_patches=25, val=0.1, test=0.2, threads=0, cache_workers=0,
                 resume_backbone="resnet10t", resume_batch=32, resume_patches=1, share_window_s=10.0,
                 compile_train_patches=32, compile_eval_batch=250, compile_backend=None),
    "smoke": dict(images=16, device="cpu", backbone="test_resnet", patch=64, batch=32, eval_batch=64,
                  train_patches=8, test_patches=4, val=0.25, test=0.25, threads=1, cache_workers=1,
                  resume_backbone="test_resnet", resume_batch=32, resume_patches=4, share_window_s=3.0,
                  compile_train_patches=8, compile_eval_batch=64, compile_backend="aot_eager"),
}
# NEED: seconds a check needs to be worth starting (CUDA, smoke). LIMIT: its timeout (less if the budget ends).
NEED = {"a": (60, 40), "b": (60, 40), "g": (1, 1), "c": (40, 30), "e": (50, 40), "d": (90, 60), "f": (150, 25)}
LIMIT = {"a": 180, "b": 150, "g": 10, "c": 150, "e": 180, "d": 300, "f": 600}


class CheckFailed(Exception):
    def __init__(self, reason: str, data: dict | None = None):
        super().__init__(reason)
        self.data = data or {}


class Skipped(CheckFailed):
    pass


# ------------------------------------------------------------------------------------------------
# Workers: each runs in its own process (python bench/gpu_check.py --worker KIND --spec JSON)
# ------------------------------------------------------------------------------------------------

def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _finite(*values) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_info(device) -> dict:
    import torch

    info = {"torch": torch.__version__}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, total_gib=props.total_memory / 2**30,
                    peak_allocated_gib=torch.cuda.max_memory_allocated(device) / 2**30,
                    peak_reserved_gib=torch.cuda.max_memory_reserved(device) / 2**30)
    return info


def _stores(solver) -> dict:
    """Where each split's images live; the device-cache budget the solver's data layer granted."""
    out = {"device_cache_gb": solver.cfg.device_cache_gb}
    for name in ("train", "val", "test"):
        store = getattr(getattr(solver.data, name, None), "store", None)
        on_device = getattr(store, "on_device", None)
        if on_device is not None:
            out[f"{name}_on_device"] = bool(on_device)
            if on_device:
                out[f"{name}_device_mib"] = solver.data.cache.nbytes(solver._eval_indices(name)) / 2**20
    return out


def _layout(solver) -> dict:
    import torch

    conv = next((p for p in solver.model.parameters() if p.dim() == 4), None)
    # The group in use, not optimizer.defaults: a resumed state could overwrite a group's setting.
    out = {"fused_adam": bool(solver.optimizer.param_groups[0].get("fused")),
           "channels_last": bool(conv is not None and conv.is_contiguous(memory_format=torch.channels_last)
                                 and not conv.is_contiguous()),
           "amp_dtype": str(solver.scoring.dtype).removeprefix("torch.") if solver.scoring.dtype else "fp32",
           "amp_bf16": solver.scoring.dtype == torch.bfloat16, "device": str(solver.device)}
    if solver.cuda:
        out["capability"] = list(torch.cuda.get_device_capability(solver.device))
    return out


def _outside_allocator_gib(device) -> float | None:
    """GPU memory this process uses beyond torch's allocator (CUDA context, library kernels and handles):
    the card's used memory less the allocator's reservation; exact only while no other process uses it."""
    import torch

    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return (total - free - torch.cuda.memory_reserved(device)) / 2**30


def _batch_sizes(n: int, batch: int) -> set[int]:
    """The distinct batch sizes of n patches cut into batches of `batch` (each a compiled shape)."""
    return ({batch} if n >= batch else set()) | ({n % batch} if n % batch else set())


def work_train(spec: dict) -> dict:
    """(a) and (d): train cfg.epochs epochs with evaluation, save a checkpoint, time one evaluation."""
    import torch

    from hyperiqa.config import TrainConfig
    from hyperiqa.solver import Solver

    cfg = TrainConfig.from_dict(spec["cfg"], source="gpu_check")
    if spec.get("compile_backend"):  # the CPU smoke: dynamo and AOTAutograd without inductor's C++ build
        import functools

        torch.compile = functools.partial(torch.compile, backend=spec["compile_backend"])
    t0 = time.monotonic()
    solver = Solver(cfg, log=_log)
    out = {"setup_s": time.monotonic() - t0, **_layout(solver), **_stores(solver)}
    if solver.cuda:
        torch.cuda.reset_peak_memory_stats(solver.device)
    out["epochs"] = [{k: m.get(k) for k in ("train_loss", "val_srcc", "val_plcc", "test_srcc", "test_plcc",
                                            "patches_per_s", "time_s")} for m in solver.epochs()]
    out["train_patches_per_epoch"] = solver.data.train.num_patches
    evals = [c for c in (solver.data.val, solver.data.test) if c is not None]
    out["batch_sizes"] = {"train": sorted({b - a for a, b in solver.data.train.bounds}),
                          "eval": sorted(set().union(*(_batch_sizes(c.num_patches, cfg.eval_batch_size)
                                                       for c in evals)))}
    if spec.get("checkpoint"):
        solver.save_checkpoint(spec["checkpoint"], solver.history[-1])
        out["checkpoint"] = spec["checkpoint"]
    _sync(solver.device)
    t0 = time.monotonic()
    result = solver.evaluate("test")
    _sync(solver.device)
    out["eval_patches_per_s"] = solver.data.test.num_patches / (time.monotonic() - t0)
    out["test_srcc_inprocess"] = result["srcc"]
    indices, pred = solver.predict("test")
    out["test_predictions"] = {solver.data.spec.records[i].path: float(v) for i, v in zip(indices, pred)}
    out["outside_allocator_gib"] = _outside_allocator_gib(solver.device)
    # Patch scores that are exactly bf16 numbers: ~1.0 means the scores were rounded to bf16 somewhere.
    with torch.inference_mode(), solver._autocast():
        scores = torch.cat([solver.forward(x).float() for x, _ in solver.data.test.batches()])
    out["bf16_exact_scores"] = float((scores == scores.to(torch.bfloat16).float()).float().mean())
    out.update(_device_info(solver.device))
    return out


def _barrier(folder: Path, index: int, n: int, timeout: float) -> bool:
    """Wait until n workers have written their ready file (True), or give up after timeout (False)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"ready.{index}").touch()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if len(list(folder.glob("ready.*"))) >= n:
            return True
        time.sleep(0.05)
    return False


def work_share(spec: dict) -> dict:
    """(b): one of N processes sharing the device, each with cfg.gpu_memory_fraction."""
    import resource

    import torch

    from hyperiqa.config import TrainConfig
    from hyperiqa.solver import Solver

    cfg = TrainConfig.from_dict(spec["cfg"], source="gpu_check")
    solver = Solver(cfg, log=_log)
    dev = solver.device
    out = {**_layout(solver), **_stores(solver), "fraction": cfg.gpu_memory_fraction}
    getter = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    if solver.cuda and getter is not None:  # takes an index: torch.device("cuda") alone is rejected
        out["fraction_in_effect"] = float(getter(torch.cuda.current_device() if dev.index is None else dev.index))
    warm = solver.train_epoch()  # outside the window: autotuning, allocator
    out["overlapped"] = _barrier(Path(spec["barrier"]), spec["index"], spec["n"], spec["barrier_timeout"])
    out["window_start"] = time.time()
    t0, patches, losses = time.monotonic(), 0, [warm["train_loss"]]
    while time.monotonic() - t0 < spec["window_s"]:
        m = solver.train_epoch()
        losses.append(m["train_loss"])
        patches += solver.data.train.num_patches
    out["window_end"] = time.time()
    out["patches_per_s"] = patches / (time.monotonic() - t0)
    out["losses_finite"] = _finite(*losses)
    out["test_srcc"] = solver.evaluate("test")["srcc"]
    out.update(_device_info(dev))
    if solver.cuda:  # the allocator's cap: the share less hyperiqa.runtime's CUDA-context allowance
        from hyperiqa.runtime import allocator_fraction

        out["allocator_fraction"] = allocator_fraction(cfg.gpu_memory_fraction, out["total_gib"] * 2**30)
        out["cap_gib"] = out["allocator_fraction"] * out["total_gib"]
        out["share_gib"] = cfg.gpu_memory_fraction * out["total_gib"]
        out["outside_allocator_gib"] = _outside_allocator_gib(dev)  # both processes: see check_g
    out["max_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def _reference_step(solver) -> dict:
    """One optimizer step of the resumed solver vs. single-tensor Adam from the same state and gradients."""
    import torch
    import torch.nn.functional as F

    opt = solver.optimizer
    params = [p for g in opt.param_groups for p in g["params"]]
    mismatched = sum(1 for p in params if p in opt.state and "exp_avg" in opt.state[p]
                     and opt.state[p]["exp_avg"].stride() != p.stride())
    ref_model = copy.deepcopy(solver.model)
    ref_groups = [{"params": list(ref_model.backbone_parameters())}, {"params": list(ref_model.head_parameters())}]
    state = copy.deepcopy(opt.state_dict())
    for g in state["param_groups"]:
        g.update(fused=False, foreach=False)
    ref_opt = type(opt)(ref_groups, lr=1.0, fused=False, foreach=False)
    ref_opt.load_state_dict(state)
    solver.model.train()
    x, y = next(iter(solver.data.train.epoch(solver.epoch)))
    with solver._autocast():
        loss = F.l1_loss(solver.model(x).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    ref_params = [p for g in ref_opt.param_groups for p in g["params"]]
    for p, q in zip(params, ref_params):
        q.grad = None if p.grad is None else p.grad.detach().clone()
    before = [p.detach().clone() for p in params]
    opt.step()
    ref_opt.step()
    # Rounding may differ (a few ulps of the parameter); a layout mix-up moves elements by about an update.
    bad = total = 0
    diff = update = 0.0
    with torch.no_grad():
        for p, q, b in zip(params, ref_params, before):
            d, u = (p - q).abs(), (q - b).abs().max()
            bad += int((d > 1e-3 * u + 4 * torch.finfo(q.dtype).eps * q.abs()).sum())
            total += d.numel()
            diff, update = max(diff, float(d.max())), max(update, float(u))
        finite = all(bool(torch.isfinite(p).all()) for p in params)
    return {"state_stride_mismatches": mismatched, "state_tensors": len(params), "step_bad_elements": bad,
            "step_elements": total, "step_max_diff": diff, "step_max_update": update, "params_finite": finite}


def work_resume(spec: dict) -> dict:
    """(c): a CPU checkpoint resumed by a solver on spec['resume_device']."""
    from hyperiqa.config import TrainConfig
    from hyperiqa.solver import Solver

    cfg = TrainConfig.from_dict(spec["cfg"], source="gpu_check")
    t0 = time.monotonic()
    cpu = Solver(cfg, log=_log)
    first = next(cpu.epochs())
    cpu.save_checkpoint(spec["checkpoint"], first)
    out = {"cpu_loss": first["train_loss"], "cpu_epoch_s": time.monotonic() - t0}
    del cpu
    solver = Solver(cfg.replace(device=spec["resume_device"]), log=_log)
    solver.load_checkpoint(spec["checkpoint"])
    out.update(_layout(solver))
    out.update(_reference_step(solver))
    second = next(solver.epochs())
    out.update(resumed_epoch=second["epoch"], resumed_loss=second["train_loss"],
               resumed_patches_per_s=second["patches_per_s"], **_device_info(solver.device))
    return out


WORKERS = {"train": work_train, "share": work_share, "resume": work_resume}


def worker_main(kind: str, spec: str) -> int:
    try:
        result = WORKERS[kind](json.loads(spec))
        code = 0
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as the check's reason
        import traceback

        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
        code = 1
    print(MARK + json.dumps(result, default=float), flush=True)
    return code


# ------------------------------------------------------------------------------------------------
# The parent: data, subprocesses, checks, report
# ------------------------------------------------------------------------------------------------

LIVE: list[subprocess.Popen] = []  # children to kill if this script is terminated


def _one_image(job) -> None:
    import numpy as np
    from data_pipeline import natural_image

    path, i = job
    natural_image(np.random.default_rng([0, i])).save(path, quality=90)


def make_images(root: Path, count: int) -> list[Path]:
    """make_koniq_folder's layout (1024x768/*.jpg + koniq10k_scores_and_distributions.csv), generated by
    all cores (one seeded RNG per image). bench/throughput.py finds and reuses the folder."""
    import numpy as np

    folder = root / "1024x768"
    paths = [folder / f"{1000000 + i}.jpg" for i in range(count)]
    table = root / "koniq10k_scores_and_distributions.csv"
    if table.is_file() and all(p.exists() for p in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    with mp.get_context("fork").Pool(min(count, os.cpu_count() or 1)) as pool:
        pool.map(_one_image, [(str(p), i) for i, p in enumerate(paths)])
    mos = np.random.default_rng(0).uniform(1.5, 4.5, count)
    with open(table, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "MOS_zscore"])
        for p, m in zip(paths, mos):
            writer.writerow([p.name, 0, 0, 0, 0, 0, 0, f"{m:.3f}", "0.5", f"{(m - 1) * 25:.3f}"])
    return paths


def start(cmd: list[str], env: dict) -> subprocess.Popen:
    """A child in its own process group, its output in temporary files (no pipe can fill up and block it)."""
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in finish()
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err, text=True, start_new_session=True)
    p.files = (out, err)
    LIVE.append(p)
    return p


def finish(p: subprocess.Popen, timeout: float) -> tuple[int | None, str, str, bool]:
    """(returncode, stdout, stderr, timed_out); on timeout the child's whole process group is killed."""
    try:
        p.wait(timeout=max(timeout, 1))
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        timed_out = True
    LIVE.remove(p)
    texts = []
    for fh in p.files:
        fh.seek(0)
        texts.append(fh.read())
        fh.close()
    return p.returncode, texts[0], texts[1], timed_out


def run(cmd: list[str], timeout: float, env: dict) -> tuple[int | None, str, str, bool]:
    return finish(start(cmd, env), timeout)


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def parse_worker(rc, out: str, err: str, timed_out: bool, timeout: float) -> dict:
    lines = [ln for ln in out.splitlines() if ln.startswith(MARK)]
    result = json.loads(lines[-1][len(MARK):]) if lines else None
    tail = {"stderr_tail": (err or "")[-3000:]}
    if timed_out:
        raise CheckFailed(f"timed out after {timeout:.0f} s (last stderr: {last_line(err)})", tail)
    if result is None:
        raise CheckFailed(f"worker exited {rc} without a result: {last_line(err)}", tail)
    if "error" in result:
        raise CheckFailed(result["error"].splitlines()[0][:300] if result["error"] else "error", tail)
    return result


class Context:
    def __init__(self, mode: str, work: Path, out_path: Path):
        self.work, self.out_path = work, out_path
        self.s = SIZES[mode]
        self.smoke = mode == "smoke"
        self.results: dict[str, dict] = {}
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
        if self.smoke:
            self.env["OMP_NUM_THREADS"] = "1"

    def cfg(self, **changes) -> dict:
        s = self.s
        base = dict(dataset="koniq10k", data_root=str(self.work / "koniq"), cache_dir=str(self.work / "cache"),
                    backbone=s["backbone"], pretrained=False, patch_size=s["patch"], batch_size=s["batch"],
                    eval_batch_size=s["eval_batch"], train_patches=s["train_patches"],
                    test_patches=s["test_patches"], val_fraction=s["val"], test_fraction=s["test"], epochs=2,
                    device=s["device"], amp=True, channels_last=True, compile=False,
                    num_threads=s["threads"], cache_workers=s["cache_workers"])
        return {**base, **changes}

    def worker(self, kind: str, spec: dict, timeout: float) -> dict:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--spec", json.dumps(spec)]
        return parse_worker(*run(cmd, timeout, self.env), timeout)

    def data(self, key: str) -> dict:
        return self.results.get(key, {}).get("data", {})


def _gib(v) -> str:
    return f"{v:.1f} GiB" if v is not None else "-"


def _peak(r: dict) -> str:
    if r.get("peak_allocated_gib") is None:
        return ""
    return f", peak {_gib(r['peak_allocated_gib'])} allocated / {_gib(r.get('peak_reserved_gib'))} reserved"


def _num(v, spec=".4f") -> str:
    return "-" if v is None else format(v, spec)


def check_a(ctx: Context, timeout: float):
    r = ctx.worker("train", {"cfg": ctx.cfg(), "checkpoint": str(ctx.work / "ckpt_a")}, timeout)
    e1, e2 = r["epochs"][0], r["epochs"][-1]
    line = (f"{ctx.s['backbone']} patch {ctx.s['patch']} batch {ctx.s['batch']} device={ctx.s['device']!r} "
            f"({r['device']}; bf16 {r['amp_bf16']}, channels_last {r['channels_last']}, fused Adam "
            f"{r['fused_adam']}; train images on device {r.get('train_on_device')}): train "
            f"{e2['patches_per_s']:,.0f} patches/s (epoch 1, warm-up: {e1['patches_per_s']:,.0f}), eval "
            f"{r['eval_patches_per_s']:,.0f} patches/s{_peak(r)}, loss {_num(e2['train_loss'])}, val srcc "
            f"{_num(e2['val_srcc'])}, test srcc {_num(e2['test_srcc'])}, bf16-exact patch scores "
            f"{r['bf16_exact_scores']:.0%}, setup {r['setup_s']:.1f} s")
    bad = [f"epoch {i + 1} {k} = {m[k]}" for i, m in enumerate(r["epochs"])
           for k in ("train_loss", "val_srcc", "val_plcc", "test_srcc", "test_plcc") if not _finite(m[k])]
    if bad:
        raise CheckFailed(f"non-finite: {', '.join(bad)} ({line})", r)
    return line, r


def check_b(ctx: Context, timeout: float):
    n, barrier = 2, ctx.work / f"barrier_b_{time.time_ns()}"
    cmds = [[sys.executable, str(Path(__file__).resolve()), "--worker", "share", "--spec", json.dumps(
        {"cfg": ctx.cfg(gpu_memory_fraction=0.5, epochs=1000), "index": i, "n": n, "barrier": str(barrier),
         "barrier_timeout": min(60.0, timeout / 2), "window_s": ctx.s["share_window_s"]})] for i in range(n)]
    procs = [start(c, ctx.env) for c in cmds]
    end, results, problems = time.monotonic() + timeout, [], []
    for i, p in enumerate(procs):
        try:
            results.append(parse_worker(*finish(p, end - time.monotonic()), timeout))
        except CheckFailed as exc:
            results.append({"error": str(exc), **exc.data})
            problems.append(f"process {i}: {exc}")
    data = {"processes": results}
    if problems:
        raise CheckFailed("; ".join(problems), data)
    overlap = min(r["window_end"] for r in results) - max(r["window_start"] for r in results)
    data["overlap_s"] = overlap
    parts = []
    for i, r in enumerate(results):
        where = ", ".join(f"{s} {'GPU' if r.get(f'{s}_on_device') else 'host'}" for s in ("train", "val", "test")
                          if f"{s}_on_device" in r)
        mem = (f"reserved {_gib(r['peak_reserved_gib'])} of cap {_gib(r['cap_gib'])} (share {_gib(r['share_gib'])} "
               f"less the context allowance; fraction in effect {r.get('fraction_in_effect', 'unknown')})"
               if "cap_gib" in r
               else f"max RSS {_gib(r['max_rss_gib'])}")
        parts.append(f"p{i}: {r['patches_per_s']:,.0f} patches/s, {mem}, images: {where} "
                     f"(device_cache_gb {r['device_cache_gb']:g})")
        if not r["losses_finite"]:
            problems.append(f"p{i}: non-finite training loss")
        if "cap_gib" in r and r["peak_reserved_gib"] > r["cap_gib"]:
            problems.append(f"p{i}: reserved {r['peak_reserved_gib']:.2f} GiB > cap {r['cap_gib']:.2f} GiB")
        if "fraction_in_effect" in r and abs(r["fraction_in_effect"] - r["allocator_fraction"]) > 1e-6:
            problems.append(f"p{i}: fraction in effect {r['fraction_in_effect']} != {r['allocator_fraction']:.4f} "
                            "(0.5 less the context allowance)")
    if overlap <= 0:
        problems.append(f"the training windows did not overlap ({overlap:.1f} s)")
    form = "[CPU form: no memory cap on the CPU, not checked] " if ctx.smoke else ""
    line = (f"{form}2 processes at gpu_memory_fraction 0.5, windows overlapping {overlap:.1f} s, total "
            f"{sum(r['patches_per_s'] for r in results):,.0f} patches/s; " + "; ".join(parts))
    if problems:
        raise CheckFailed(f"{'; '.join(problems)} ({line})", data)
    return line, data


def check_c(ctx: Context, timeout: float):
    s = ctx.s
    cfg = ctx.cfg(device="cpu", backbone=s["resume_backbone"], batch_size=s["resume_batch"],
                  train_patches=s["resume_patches"], test_patches=s["resume_patches"])
    r = ctx.worker("resume", {"cfg": cfg, "checkpoint": str(ctx.work / "ckpt_c"), "resume_device": s["device"]},
                   timeout)
    form = "[CPU form: resumed on the CPU, no fused Adam or channels_last] " if ctx.smoke else ""
    line = (f"{form}{s['resume_backbone']} epoch 1 on cpu (loss {_num(r['cpu_loss'])}), resumed on {r['device']} "
            f"(fused Adam {r['fused_adam']}, channels_last {r['channels_last']}): Adam state strides differing "
            f"from their parameter's after load {r['state_stride_mismatches']}/{r['state_tensors']}; resumed "
            f"step vs single-tensor Adam: {r['step_bad_elements']:,} of {r['step_elements']:,} elements beyond "
            f"rounding (max diff {r['step_max_diff']:.1e}, max update {r['step_max_update']:.1e}); epoch "
            f"{r['resumed_epoch']} loss {_num(r['resumed_loss'])}, {r['resumed_patches_per_s']:,.0f} patches/s")
    problems = []
    if not _finite(r["cpu_loss"], r["resumed_loss"]) or not r["params_finite"]:
        problems.append("non-finite loss or parameters")
    if r["step_bad_elements"]:
        problems.append(f"the resumed optimizer step differs from the reference in {r['step_bad_elements']:,} "
                        "elements")
    if not ctx.smoke and not r["fused_adam"]:
        problems.append("Adam is not fused after loading the CPU-written state (param_groups[0]['fused'])")
    if problems:
        raise CheckFailed(f"{'; '.join(problems)} ({line})", r)
    return line, r


def check_d(ctx: Context, timeout: float):
    # Every batch of one shape (no partial last batch): a second shape would add a dynamic-shape recompile.
    s = ctx.s
    cfg = ctx.cfg(compile=True, train_patches=s["compile_train_patches"], eval_batch_size=s["compile_eval_batch"])
    r = ctx.worker("train", {"cfg": cfg, "compile_backend": s["compile_backend"]}, timeout)
    e1, e2 = r["epochs"][0], r["epochs"][-1]
    plain = (ctx.data("a").get("epochs") or [{}])[-1].get("patches_per_s")
    speed = f" ({e2['patches_per_s'] / plain:.2f}x (a) without compile)" if plain else ""
    form = f"[CPU form: backend {s['compile_backend']}, no inductor code generation] " if s["compile_backend"] else ""
    line = (f"{form}compile: true, {s['backbone']}, train_patches {s['compile_train_patches']}, eval batch "
            f"{s['compile_eval_batch']} (batch sizes: train {r['batch_sizes']['train']}, eval "
            f"{r['batch_sizes']['eval']}): compile and warm-up {e1['time_s'] - e2['time_s']:.1f} s (epoch 1 "
            f"{e1['time_s']:.1f} s minus epoch 2 {e2['time_s']:.1f} s, both with evaluation); steady train "
            f"{e2['patches_per_s']:,.0f} patches/s{speed}, eval {r['eval_patches_per_s']:,.0f} patches/s"
            f"{_peak(r)}, loss {_num(e2['train_loss'])}, test srcc {_num(e2['test_srcc'])}")
    bad = [f"epoch {i + 1} {k} = {m[k]}" for i, m in enumerate(r["epochs"])
           for k in ("train_loss", "val_srcc", "test_srcc") if not _finite(m[k])]
    if bad:
        raise CheckFailed(f"non-finite: {', '.join(bad)} ({line})", r)
    return line, r


# Per-image agreement: |a - b| <= PER_IMAGE_RTOL x |b|. Two processes may score a bf16 model with different
# cuDNN algorithms (cudnn.benchmark times them anew), so equal paths agree to bf16 rounding, not bitwise;
# an SRCC of near-tied random-init scores could swap ranks on that noise. 2e-3 is half of bf16's epsilon
# (2^-8); not yet calibrated on a GPU: each line prints the largest difference seen.
PER_IMAGE_RTOL = 2e-3


def compare_predictions(got: dict, want: dict, rtol: float = PER_IMAGE_RTOL) -> dict:
    """{path: score} against {path: score}: images missing either side, how many differ beyond rtol, the
    largest relative difference."""
    common = sorted(set(got) & set(want))
    rel = [abs(got[k] - want[k]) / max(abs(want[k]), 1e-12) for k in common]
    return {"compared": len(common), "missing": len(set(got) ^ set(want)),
            "beyond_rtol": sum(r > rtol for r in rel), "max_rel_diff": max(rel, default=0.0)}


def _agreement(name: str, cmp: dict) -> tuple[str, str | None]:
    """(description, problem or None) of a compare_predictions result."""
    text = f"{name}: {cmp['compared']} images, max rel diff {cmp['max_rel_diff']:.1e}"
    bad = cmp["missing"] or cmp["beyond_rtol"] or not cmp["compared"]
    return text, (f"{name}: {cmp['beyond_rtol']} of {cmp['compared']} images beyond rtol {PER_IMAGE_RTOL:g}, "
                  f"{cmp['missing']} missing on one side" if bad else None)


def _evaluate_cli(ctx: Context, ckpt: Path, end: float) -> tuple[dict, dict]:
    """(metrics, {path: prediction}) of `python -m hyperiqa.evaluate --split test --predictions CSV`."""
    table = ctx.work / f"predictions_{ckpt.name}.csv"
    cmd = [sys.executable, "-m", "hyperiqa.evaluate", "--checkpoint", str(ckpt), "--split", "test", "--json",
           "--predictions", str(table)]
    rc, out, err, timed_out = run(cmd, end - time.monotonic(), ctx.env)
    if timed_out or rc != 0:
        raise CheckFailed(f"evaluate {ckpt.name}: {'timed out' if timed_out else f'exit {rc}'}: {last_line(err)}",
                          {"stderr_tail": err[-3000:]})
    rows = csv.DictReader(table.read_text().splitlines())
    return (json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1]),
            {row["path"]: float(row["prediction"]) for row in rows})


def _checkpoint_copy(ckpt: Path, dest: Path, config: dict, preprocess: dict | None = None) -> Path:
    """A copy of `ckpt` whose config.yaml (and preprocess.json) have these values changed."""
    import yaml

    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(ckpt, dest)
    cfg = yaml.safe_load((dest / "config.yaml").read_text())
    (dest / "config.yaml").write_text(yaml.safe_dump({**cfg, **config}, sort_keys=False))
    if preprocess:
        pre = json.loads((dest / "preprocess.json").read_text())
        (dest / "preprocess.json").write_text(json.dumps({**pre, **preprocess}))
    return dest


def _predict_cli(ctx: Context, ckpt: Path, images: list[str], end: float, *extra: str) -> dict:
    """{path: score} of `python -m hyperiqa.predict` on this check's device."""
    cmd = [sys.executable, "-m", "hyperiqa.predict", "--checkpoint", str(ckpt), "--device", ctx.s["device"],
           *extra, *images]
    rc, out, err, timed_out = run(cmd, end - time.monotonic(), ctx.env)
    if timed_out or rc != 0:
        raise CheckFailed(f"predict: {'timed out' if timed_out else f'exit {rc}'}: {last_line(err)}",
                          {"stderr_tail": err[-3000:]})
    return {row["path"]: float(row["score"]) for row in csv.DictReader(out.splitlines())}


def check_e(ctx: Context, timeout: float):
    """The CLIs against (a)'s in-process predictions, image by image; predict against evaluate."""
    end = time.monotonic() + timeout
    a = ctx.data("a")
    ckpt = Path(a.get("checkpoint") or ctx.work / "ckpt_a")
    if not (ckpt / "config.yaml").is_file() or not a.get("test_predictions"):
        raise CheckFailed(f"no checkpoint and test predictions from (a) in {ckpt}")
    ref = a["test_predictions"]
    data, problems, parts = {"inprocess_srcc": a.get("test_srcc_inprocess")}, [], []

    def compare(name, got, want):
        text, problem = _agreement(name, compare_predictions(got, want))
        parts.append(text)
        if problem:
            problems.append(problem)

    device = "auto" if ctx.smoke else "cuda"
    portable = _checkpoint_copy(ckpt, ctx.work / "ckpt_portable", {"device": device, "gpu_memory_fraction": 0.5})
    # Images resized to the patch size: every crop is the whole image, so predict's crops and evaluate's
    # fixed crops are the same pixels and the two must agree image by image.
    side = [ctx.s["patch"], ctx.s["patch"]]
    whole = _checkpoint_copy(ckpt, ctx.work / "ckpt_whole", {"resize_to": side, "resize_short_side": None},
                             {"resize_to": side, "short_side": None})
    steps = [("evaluate CLI vs in-process", lambda: _evaluate_cli(ctx, ckpt, end), ref),
             (f"exported (device {device}, gpu_memory_fraction 0.5) vs in-process",
              lambda: _evaluate_cli(ctx, portable, end), ref)]
    for name, call, want in steps:
        try:
            metrics, got = call()
            data[name] = {"srcc": metrics.get("srcc"), "predictions": got}
            compare(name, got, want)
        except CheckFailed as exc:
            problems.append(f"{name}: {exc}")
    try:
        _, evaluated = _evaluate_cli(ctx, whole, end)
        predicted = _predict_cli(ctx, whole, sorted(evaluated), end, "--crops", str(ctx.s["test_patches"]),
                                 "--batch-size", str(ctx.s["eval_batch"]))
        data["predict_vs_evaluate"] = {"evaluate": evaluated, "predict": predicted}
        compare(f"predict vs evaluate (images resized to {side[0]}x{side[1]})", predicted, evaluated)
    except CheckFailed as exc:
        problems.append(f"predict vs evaluate: {exc}")
    form = "[CPU form: exported config says device auto] " if ctx.smoke else ""
    line = f"{form}per-image test scores on {ctx.s['device']}: " + "; ".join(parts)
    if problems:
        raise CheckFailed(f"{'; '.join(problems)} ({line})", data)
    return line, data


def expected_amp_dtype(capability) -> str:
    """The autocast dtype TrainConfig amp=true should give on a device of this compute capability (None: CPU)."""
    from hyperiqa.inference import BF16_MIN_CAPABILITY

    return "bfloat16" if capability and tuple(capability) >= BF16_MIN_CAPABILITY else "fp32"


def check_g(ctx: Context, timeout: float):
    """From (a) and (b)'s measurements: the memory outside the allocator against the allowance that
    hyperiqa.runtime subtracts from a shared GPU's cap, and the AMP dtype against the capability."""
    from hyperiqa.runtime import CUDA_CONTEXT_ALLOWANCE_GIB

    a = ctx.data("a")
    if "amp_dtype" not in a:
        raise CheckFailed("needs (a)'s measurements, and (a) did not run to its end")
    problems, data = [], {"allowance_gib": CUDA_CONTEXT_ALLOWANCE_GIB, "capability": a.get("capability"),
                          "amp_dtype": a["amp_dtype"]}
    want = expected_amp_dtype(a.get("capability"))
    if a["amp_dtype"] != want:
        problems.append(f"AMP dtype {a['amp_dtype']}, expected {want} for capability {a.get('capability')}")
    amp = f"AMP dtype {a['amp_dtype']} (capability {a.get('capability') or 'none: CPU'}, expected {want})"
    if ctx.smoke:
        return f"[CPU form: no CUDA context to measure] {amp}", data
    outside = a.get("outside_allocator_gib")
    shared = [p.get("outside_allocator_gib") for p in ctx.data("b").get("processes", [])]
    data.update(outside_allocator_gib=outside, shared_outside_allocator_gib=shared)
    if outside is None:
        problems.append("(a) measured no memory outside the allocator")
    elif outside > CUDA_CONTEXT_ALLOWANCE_GIB:
        problems.append(f"the CUDA context and libraries take {outside:.2f} GiB, more than the "
                        f"{CUDA_CONTEXT_ALLOWANCE_GIB} GiB allowance (hyperiqa/runtime.py CUDA_CONTEXT_ALLOWANCE_GIB)")
    line = (f"memory outside torch's allocator after (a)'s training: {_gib2(outside)} (allowance "
            f"{CUDA_CONTEXT_ALLOWANCE_GIB} GiB; (b)'s two processes, card-wide so counted together: "
            f"{', '.join(_gib2(v) for v in shared) or '-'}); {amp}")
    if problems:
        raise CheckFailed(f"{'; '.join(problems)} ({line})", data)
    return line, data


def _gib2(v) -> str:
    return f"{v:.2f} GiB" if v is not None else "-"


def check_f(ctx: Context, timeout: float):
    json_out = ctx.out_path.with_name(ctx.out_path.stem + "_throughput.json")
    json_out.unlink(missing_ok=True)
    if ctx.smoke:
        extra = ["--device", "cpu", "--backbones", ctx.s["backbone"], "--patch", "32", "--batch",
                 str(ctx.s["batch"]), "--eval-batch", str(ctx.s["eval_batch"]), "--images", str(ctx.s["images"]),
                 "--epochs", "1", "--share", "", "--original-batches", "2", "--original-eval-patches", "8",
                 "--threads", "1"]
    else:
        extra = ["--quick"]
    cmd = [sys.executable, str(ROOT / "bench" / "throughput.py"), *extra, "--workdir", str(ctx.work),
           "--out", str(json_out)]
    t0 = time.monotonic()
    rc, out, err, timed_out = run(cmd, timeout, ctx.env)
    lines = out.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("device:")), len(lines))
    data = {"command": shlex.join(cmd[1:]), "stdout": out[-6000:], "stderr_tail": err[-3000:],
            "table": "\n".join(lines[start:])}
    # Printed under the check's line: the table, or what a cut run had measured so far.
    data["print"] = data["table"] or "\n".join(ln for ln in lines if ln.startswith(("---", "solver:", "original:",
                                                                                   "shared")))
    if json_out.is_file():
        data["json"] = json.loads(json_out.read_text())
    if timed_out:
        raise Skipped(f"cut by the time budget after {time.monotonic() - t0:.0f} s; its partial output is in "
                      "the JSON", data)
    if rc != 0 or not data["table"]:
        raise CheckFailed(f"exit {rc}: {last_line(err)}", data)
    form = "[CPU form: tiny CPU arguments] " if ctx.smoke else ""
    return f"{form}throughput.py {shlex.join(extra)} in {time.monotonic() - t0:.0f} s", data


CHECKS = [("a", "train one configuration", check_a), ("b", "two processes sharing the device", check_b),
          ("g", "memory headroom and AMP dtype", check_g),
          ("c", "resume a CPU checkpoint", check_c), ("e", "evaluate/predict CLIs", check_e),
          ("d", "compile: true", check_d), ("f", "bench/throughput.py", check_f)]


def write_json(path: Path, report: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    os.replace(tmp, path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU (exercises the script)")
    p.add_argument("--out", type=Path, help="JSON report (default: $OUT/gpu_check.json, else ./gpu_check.json)")
    p.add_argument("--budget", type=float, default=500.0,
                   help="seconds from the start; checks that no longer fit are skipped (default 500)")
    p.add_argument("--only", default="", help="comma-separated checks to run, e.g. a,e (default all)")
    p.add_argument("--workdir", type=Path, help="images, cache and checkpoints (default: a new temp dir)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker_main(args.worker, args.spec)

    started = time.monotonic()
    deadline = started + args.budget
    mode = "smoke" if args.cpu_smoke else "cuda"
    out_path = args.out or Path(os.environ["OUT"] if os.environ.get("OUT") else ".") / "gpu_check.json"
    out_path = out_path.resolve()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="hyperiqa-gpucheck-"))).resolve()
    ctx = Context(mode, work, out_path)
    only = {c for c in args.only.split(",") if c}

    def on_term(signum, frame):
        for child in list(LIVE):
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)

    import torch

    report = {"mode": mode, "torch": torch.__version__, "python": sys.version.split()[0], "budget_s": args.budget,
              "workdir": str(work), "sizes": ctx.s, "checks": ctx.results}
    print(f"gpu_check ({'CPU smoke' if ctx.smoke else 'CUDA'}), torch {torch.__version__}, budget {args.budget:.0f} s, "
          f"work dir {work}", flush=True)
    setup_error = None
    if not ctx.smoke and not torch.cuda.is_available():
        setup_error = "torch sees no CUDA device (use --cpu-smoke on a machine without one)"
    else:
        t0 = time.monotonic()
        try:
            make_images(work / "koniq", ctx.s["images"])
            report["images_s"] = time.monotonic() - t0
            print(f"generated {ctx.s['images']} KonIQ-layout 1024x768 JPEGs in {report['images_s']:.1f} s", flush=True)
        except Exception as exc:  # every check needs the images: each fails with this reason
            setup_error = f"generating the images failed: {type(exc).__name__}: {exc}"
    for key, title, fn in CHECKS:
        if only and key not in only:
            continue
        need, left = NEED[key][ctx.smoke], deadline - time.monotonic()
        t0 = time.monotonic()
        try:
            if setup_error:
                raise CheckFailed(setup_error)
            if left < need:
                raise Skipped(f"{left:.0f} s of the budget left, needs about {need} s")
            detail, data = fn(ctx, min(LIMIT[key], left - 5))
            status, reason = "PASS", None
        except Skipped as exc:
            status, reason, data, detail = "SKIP", str(exc), exc.data, None
        except CheckFailed as exc:
            status, reason, data, detail = "FAIL", str(exc), exc.data, None
        except Exception as exc:  # a bug in the check itself still fails only this check
            status, reason, data, detail = "FAIL", f"{type(exc).__name__}: {exc}", {}, None
        seconds = time.monotonic() - t0
        reason = " ".join(reason.split()) if reason else None
        line = f"{status} ({key}) {detail}" if detail else f"{status} ({key}) {title}: {reason}"
        print(f"{line} [{seconds:.0f} s]", flush=True)
        if data.get("print"):
            print(data["print"], flush=True)
        ctx.results[key] = {"status": status, "title": title, "line": line, "reason": reason,
                            "seconds": round(seconds, 1), "data": data}
        report["device"] = report.get("device") or data.get("device_name")
        report["elapsed_s"] = round(time.monotonic() - started, 1)
        write_json(out_path, report)
    passed = [k for k, r in ctx.results.items() if r["status"] == "PASS"]
    report["all_pass"] = bool(ctx.results) and len(passed) == len(ctx.results)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    write_json(out_path, report)
    print(f"{len(passed)}/{len(ctx.results)} checks passed in {report['elapsed_s']:.0f} s "
          f"({report.get('device') or mode}); report: {out_path}", flush=True)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if report["all_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
