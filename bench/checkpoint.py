"""A training checkpoint's content: every piece of state the loop's future depends on, captured and restored.

State (:func:`capture` / :func:`restore`), enough for the resumed run to compute exactly what the
uninterrupted run would have (bit for bit on CPU):

* the completed ``epoch`` and the optimizer ``step`` counter (model schedules such as the
  Gumbel-softmax temperature are functions of it, and their buffers are in the state dict);
* the model's ``state_dict`` and the optimizer's (Adam's moments and step counts, SGD's and
  RMSprop's momentum buffers, Adagrad's sums of squares; a learned prior's own optimizer's
  inside, ``bench.step.PriorSplit``; the learning-rate schedule and the KL warm-up are functions
  of the epoch and step);
* a trainable objective's ``state_dict`` and its own optimizer's (NVIL's baseline network and
  running moments, REBAR's temperature, RELAX's control variate);
* every random number generator the loop and its measurements draw from: the training
  ``torch.Generator`` (batch order, dynamic binarization), torch's global CPU generator (the
  estimators' samples, the measurements), every CUDA device's generator, numpy's and Python's
  global generators;
* the timing accumulators behind ``perf/*`` (times are not reproducible; their sums continue).

Storage: ``bench.store.checkpoints`` (the run's artifact store).
"""

from __future__ import annotations

import random

import numpy as np
import torch

FORMAT = 1


def capture(epoch: int, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            generator: torch.Generator, counters: tuple[float, int, float], objective=None,
            own_optimizer: torch.optim.Optimizer | None = None) -> dict:
    """The loop's state after ``epoch`` (completed and logged), as tensors and plain containers.
    ``objective``/``own_optimizer``: a trainable objective (an ``nn.Module``) and its optimizer."""
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global generator is the state to save
    trainable = isinstance(objective, torch.nn.Module)
    return {
        "objective": objective.state_dict() if trainable else {},
        "objective_optimizer": own_optimizer.state_dict() if own_optimizer is not None else {},
        "format": FORMAT,
        "epoch": epoch,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "generator_device": str(generator.device),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy_rng": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python_rng": random.getstate(),
        "counters": list(counters),
    }


def restore(state: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            generator: torch.Generator, objective=None,
            own_optimizer: torch.optim.Optimizer | None = None) -> tuple[int, int, tuple[float, int, float]]:
    """Put ``state`` back into the loop's objects and every global generator; return
    ``(completed epoch, step, counters)``."""
    if state.get("format") != FORMAT:
        raise ValueError(f"checkpoint format {state.get('format')!r}, expected {FORMAT}")
    if state["generator_device"] != str(generator.device):
        raise ValueError(f"checkpoint of a run on {state['generator_device']}, resumed on {generator.device}")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if isinstance(objective, torch.nn.Module) and state.get("objective"):
        objective.load_state_dict(state["objective"])
    if own_optimizer is not None and state.get("objective_optimizer"):
        own_optimizer.load_state_dict(state["objective_optimizer"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    name, keys, *rest = state["numpy_rng"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))  # noqa: NPY002 - as above
    random.setstate(_tuples(state["python_rng"]))
    timed_s, timed_n, train_s = state["counters"]
    return state["epoch"], state["step"], (timed_s, int(timed_n), train_s)


def _tuples(x):
    """``random.setstate`` wants tuples; a round trip through the weights-only loader keeps them,
    but be tolerant of lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
