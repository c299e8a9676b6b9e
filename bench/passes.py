"""How big one evaluation pass may be, and the evaluation's frame: eval mode, common random numbers.

An evaluation (``bench.metrics``: log p(x), the gaps; ``bench.ais``: AIS and BDMC) streams over
chunks of log-weights or latent draws. :func:`sized_chunk` sizes a chunk for the device from the
bytes one unit costs, measured on the model (:func:`allocated_bytes`), against the bytes a pass
may hold (:func:`pass_bytes`). :func:`evaluating` runs a block in eval mode and puts every
submodule's own mode back; :func:`common_random_numbers` runs a block on seeded generators and
puts the caller's streams back.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# -- the size of an evaluation pass -----------------------------------------------------------------
# An evaluation (log p(x), the gaps, AIS) streams over chunks of log-weights (or latent draws);
# ``chunk = 0`` sizes a chunk for the device by the bytes one log-weight costs (measured on the
# model by :func:`allocated_bytes`: a 784-pixel decoder's log-weight holds 784 logits, their
# softplus and products and the hidden activations, about 20-40 KB in float32, where a 64-pixel
# one costs about 4 KB), so that a pass holds about:
CPU_PASS_BYTES = 32 * 2**20  # CPU: measured on a 2-core Xeon (2 MiB L2 per core): log p(x) ran at
# its best from about 8 to 150 MiB a pass on both model sizes, and 30-40% slower at 1 GiB and more,
# where the tensors no longer stay cached and every pass maps fresh pages; below 4 MiB the per-pass
# Python overhead dominates on the small model
CUDA_FREE_FRACTION = 0.25  # CUDA: this share of the free device memory, divided among the runs
CUDA_PASS_MAX_BYTES = 4 * 2**30  # sharing the GPU (set_gpu_share), and at most this (unmeasured)
MAX_CHUNK = 2**24
MIN_UNIT_BYTES = 64  # a floor for models whose log-weights cost (next to) nothing


_GPU_SHARE = [1]  # runs sharing this process's GPU


def set_gpu_share(runs: int) -> None:
    """How many runs share this process's GPU (``--runs-per-gpu``): each evaluation pass takes
    that share of the free memory (:func:`pass_bytes`). A worker sets it at the start of each job."""
    _GPU_SHARE[0] = max(1, int(runs))


def pass_bytes(device: str | torch.device) -> int:
    """The bytes one evaluation pass may allocate on ``device`` (see the constants above). On CUDA
    ``CUDA_FREE_FRACTION`` of ``torch.cuda.mem_get_info``'s free memory, divided by the number of
    runs sharing the GPU (:func:`set_gpu_share`, which a worker calls with its job's share of
    ``--runs-per-gpu``; 1 by default), at most ``CUDA_PASS_MAX_BYTES``."""
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_PASS_BYTES
    free, _ = torch.cuda.mem_get_info(device)
    share = _GPU_SHARE[0]
    return int(min(CUDA_PASS_MAX_BYTES, CUDA_FREE_FRACTION * free / share))


class _CountAllocations(TorchDispatchMode):
    """Sums the storage bytes of the tensors every op creates: an output whose storage is one of
    the op's inputs' (a view, an in-place result) is not new memory."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.bytes += t.untyped_storage().nbytes()
        return out


def allocated_bytes(fn: Callable[[], object], device: str | torch.device = "cpu") -> int:
    """The bytes of every tensor the ops of ``fn()`` allocate (views and in-place results left out;
    tensors freed during the call counted too: the traffic of a pass, an upper bound of what it holds
    at once). The global generators (CPU, and ``device``'s on CUDA) are put back afterwards: ``fn``
    may draw without changing the caller's random stream."""
    device = torch.device(device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type="cuda"), _CountAllocations() as count:
        fn()
    return count.bytes


_UNIT_BYTES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {key: bytes per unit}


def sized_chunk(fn: Callable[[int], object], unit: int, device: str | torch.device,
                model: nn.Module | None = None, key: tuple = ()) -> int:
    """How many units (log-weights, latent draws) one pass of ``fn`` may take on ``device``:
    :func:`pass_bytes` over the bytes a unit costs, measured as the difference of
    :func:`allocated_bytes` between ``fn(1)`` and ``fn(3)`` (``fn(n)`` evaluates ``n * unit``
    units), so that what does not grow with the units (an encoder pass) is left out. ``fn(1)`` runs
    once before the two measured calls: what a first call allocates once and keeps (a VampPrior's
    components inside ``variants.priors.fixed``: an encoder pass over its ``K`` pseudo-inputs) would
    otherwise be counted in ``fn(1)`` only and make the difference too small (at the floor
    ``MIN_UNIT_BYTES``, a pass thousands of times too large). With a ``model``, the measurement is
    kept for it under ``key`` (the input's shape, dtype, ...): a model's cost per unit does not
    change with its weights, and a measurement costs three small passes, two under a Python
    dispatch mode (milliseconds, which an evaluation every epoch would repeat)."""
    cache = _UNIT_BYTES.setdefault(model, {}) if model is not None else {}
    per_unit = cache.get(key)
    if per_unit is None:
        device = torch.device(device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type="cuda"):
            fn(1)  # fills what a first call caches (see above); the caller's random stream is kept
        small, large = allocated_bytes(lambda: fn(1), device), allocated_bytes(lambda: fn(3), device)
        per_unit = cache[key] = max(MIN_UNIT_BYTES, (large - small) / (2 * unit))
    return int(max(1, min(MAX_CHUNK, pass_bytes(device) // per_unit)))


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` for the duration, then every submodule's own previous mode back."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def common_random_numbers(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with the global generators (CPU, and ``device`` if CUDA) seeded with
    ``seed``, then put their previous states back: two blocks entered with the same seed draw the
    same noise (common random numbers) and the caller's stream is left as if nothing was drawn."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        torch.manual_seed(seed)
        yield
