"""Where a process computes: an indexed device, its share of GPU memory, its CPU threads.

These settings belong to the machine a run happens on, not to the model (TrainConfig.RUNTIME_FIELDS):
checkpoints store them reset, so a model trained on a shared GPU evaluates on any machine.
"""

from __future__ import annotations

import torch

from hyperiqa.utils import UserError

# The decoded images a process keeps on its GPU may take at most this share of its memory cap; the
# rest is for the model, its activations at batch 96 and the allocator's slack.
CACHE_SHARE_OF_CAP = 0.25

# GPU memory a CUDA process uses outside torch's caching allocator, and so outside the cap that
# set_per_process_memory_fraction puts on that allocator: the CUDA context, the cuBLAS/cuDNN kernels it
# loads and their handles (0.3-0.6 GiB on recent cards and CUDA 12/13, the high end with cuDNN's
# convolution kernels loaded). A trial at gpu_memory_fraction f is capped at f x the card minus this,
# so that N trials at 1/N fit on one card together, contexts included. bench/gpu_check.py measures it.
CUDA_CONTEXT_ALLOWANCE_GIB = 0.6


def resolve_device(name: str = "auto", *, cuda_available: bool | None = None,
                   current_index: int | None = None) -> torch.device:
    """'auto', 'cpu', 'cuda' or 'cuda:N' -> a torch.device; a CUDA device always carries its index.

    Some torch calls (torch.cuda.set_per_process_memory_fraction among them) reject an index-less
    torch.device("cuda"), so 'auto' and 'cuda' resolve once, here, to the current device. Inside a Ray
    GPU worker CUDA_VISIBLE_DEVICES holds only the trial's GPU, so that is index 0 of what it sees.
    `cuda_available` and `current_index` default to what torch reports (given explicitly in tests).
    """
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if name == "auto":
        name = "cuda" if cuda_available else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"device = {name!r}: allowed values are auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise UserError(f"device = {name!r}: allowed values are auto, cpu, cuda or cuda:N")
    if not cuda_available:
        raise UserError(f"device = {name!r}, but torch sees no CUDA device; use device=cpu or auto")
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device() if current_index is None else current_index)
    elif cuda_available and current_index is None and device.index >= torch.cuda.device_count():
        raise UserError(f"device = {name!r}: this process sees {torch.cuda.device_count()} CUDA device(s)")
    return device


def apply_runtime(device: torch.device, *, num_threads: int, gpu_memory_fraction: float | None) -> None:
    """Set this process's CPU threads, current CUDA device and GPU memory cap."""
    if num_threads:
        torch.set_num_threads(num_threads)
    if device.type != "cuda":
        return
    torch.cuda.set_device(device)
    torch.backends.cudnn.benchmark = True  # fixed patch size: the autotuned kernels are reused
    if gpu_memory_fraction:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(allocator_fraction(gpu_memory_fraction, total), device)


def allocator_fraction(gpu_memory_fraction: float, total_memory: int) -> float:
    """The share of the card torch's allocator may use: gpu_memory_fraction less CUDA_CONTEXT_ALLOWANCE_GIB.

    A process whose share leaves no room beyond the allowance is a configuration mistake (UserError).
    """
    allowance = CUDA_CONTEXT_ALLOWANCE_GIB * 2**30
    share = gpu_memory_fraction * total_memory
    if share <= 2 * allowance:
        raise UserError(f"gpu_memory_fraction = {gpu_memory_fraction:g}: {share / 2**30:.1f} GiB of this "
                        f"{total_memory / 2**30:.0f} GiB GPU, too little beside the {CUDA_CONTEXT_ALLOWANCE_GIB} "
                        f"GiB its CUDA context takes; give each trial a larger share (fewer trials per GPU)")
    return (share - allowance) / total_memory


def device_cache_budget(device_cache_gb: float, gpu_memory_fraction: float | None, total_memory: int) -> int:
    """Bytes of decoded images this process may hold on its GPU.

    device_cache_gb, but never more than CACHE_SHARE_OF_CAP of the process's memory cap: the cap is
    allocator_fraction x the card's memory when the GPU is shared, the whole card otherwise. Two
    trials at 0.5 of a 40 GB card may each keep 4.85 GB of images, not the default 8.
    """
    fraction = allocator_fraction(gpu_memory_fraction, total_memory) if gpu_memory_fraction else 1.0
    return int(min(device_cache_gb * 2**30, CACHE_SHARE_OF_CAP * total_memory * fraction))


def device_cache_bytes(device: torch.device, device_cache_gb: float, gpu_memory_fraction: float | None) -> int:
    """device_cache_budget for this device (0 off CUDA: the CPU reads the shared memory-mapped cache)."""
    if device.type != "cuda":
        return 0
    total = torch.cuda.get_device_properties(device).total_memory
    return device_cache_budget(device_cache_gb, gpu_memory_fraction, total)
