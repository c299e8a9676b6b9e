"""Per-epoch training checkpoints: what is saved (every piece of state the loop's future depends
on) and where (the run's own MLflow artifact store), written so that a kill at any moment leaves
either the previous checkpoint or the new one, never a torn file in use.

State (:func:`capture` / :func:`restore`), enough for the resumed run to compute exactly what the
uninterrupted run would have (bit for bit on CPU):

* the completed ``epoch`` and the optimizer ``step`` counter (model schedules such as the
  Gumbel-softmax temperature are functions of it, and their buffers are in the state dict);
* the model's ``state_dict`` and the optimizer's (Adam's moments and step counts; the learning
  rate schedule and the KL warm-up are functions of the epoch and step);
* a trainable objective's ``state_dict`` and its own optimizer's (NVIL's baseline network and
  running moments, REBAR's temperature, RELAX's control variate);
* every random number generator the loop and its measurements draw from: the training
  ``torch.Generator`` (batch order, dynamic binarization), torch's global CPU generator (the
  estimators' samples, the measurements), every CUDA device's generator, numpy's and Python's
  global generators;
* the timing accumulators behind ``perf/*`` (times are not reproducible; their sums continue).

Storage (:class:`ArtifactCheckpoints`): ``checkpoints/epoch-NNNNNN.pt`` in the run's artifact
store, then the tag ``vaebench.checkpoint`` set to that path (in the same store write as the
epoch's metrics). The tag is the commit point: an upload cut short is never named by it, so a
reader always loads a complete file. The previous
checkpoint is deleted after the tag moves; all of them when the run finishes (its final weights
are the ``model.pt`` artifact). Through an MLflow tracking server with proxied artifacts
(``python -m bench server``) workers on any node read and write checkpoints through the server;
with a sqlite store they live beside it (``mlartifacts/``), which other nodes see only on a
shared filesystem. Files are loaded with ``torch.load(weights_only=True)``: plain tensors and
containers, no code.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

FORMAT = 1
TAG = "vaebench.checkpoint"


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


class ArtifactCheckpoints:
    """The checkpoints of one run, in its artifact store (see the module docstring)."""

    def __init__(self, client, run_id: str) -> None:
        from mlflow.store.artifact.artifact_repository_registry import (
            get_artifact_repository,
        )

        self.client = client
        self.run_id = run_id
        run = client.get_run(run_id)
        self._current: str | None = run.data.tags.get(TAG) or None
        self._repo = get_artifact_repository(run.info.artifact_uri, tracking_uri=client.tracking_uri)

    def latest(self) -> dict | None:
        """The newest complete checkpoint, or None when the run has none."""
        if not self._current:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            path = self.client.download_artifacts(self.run_id, self._current, tmp)
            return torch.load(path, map_location="cpu", weights_only=True)

    def save(self, state: dict, write_tags=None) -> None:
        """Upload ``state``, then commit it by the tag: through ``write_tags(tags)`` when given
        (the caller's own store write: the epoch's metrics and its checkpoint in one
        transaction), else on its own."""
        from mlflow.entities import RunTag

        name = f"epoch-{state['epoch']:06d}.pt"
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(state, Path(tmp) / name)
            self._repo.log_artifact(str(Path(tmp) / name), "checkpoints")
        tags = {TAG: f"checkpoints/{name}"}
        if write_tags is not None:
            write_tags(tags)
        else:
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        previous, self._current = self._current, f"checkpoints/{name}"
        if previous and previous != self._current:
            self._delete(previous)

    def clear(self) -> None:
        """Delete every checkpoint of the run (it has finished) and its tag."""
        self._delete("checkpoints")
        if self._current:
            self.client.delete_tag(self.run_id, TAG)
            self._current = None

    def _delete(self, path: str) -> None:
        with contextlib.suppress(Exception):
            self._repo.delete_artifacts(path)
