"""A run's checkpoints in its MLflow artifact store, written so that a kill at any moment leaves
either the previous checkpoint or the new one, never a torn file in use (the content:
``bench.checkpoint``).

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
import sys
import tempfile
from pathlib import Path

import torch
from mlflow.exceptions import MlflowException

from bench.store.tracking import TAG_CHECKPOINT

DIR = "checkpoints"  # the artifact directory of a run's checkpoints


def checkpoint_name(epoch: int) -> str:
    """The artifact path of the checkpoint after ``epoch``: ``checkpoints/epoch-000007.pt``."""
    return f"{DIR}/epoch-{epoch:06d}.pt"


def epoch_of_checkpoint(tags: dict[str, str]) -> int:
    """The epoch of a run's newest checkpoint (its tags' ``vaebench.checkpoint``,
    ``checkpoints/epoch-000007.pt`` -> 7); no checkpoint -> 0."""
    name = tags.get(TAG_CHECKPOINT, "")
    return int(name.rsplit("-", 1)[1].split(".")[0]) if name else 0


class ArtifactCheckpoints:
    """The checkpoints of one run, in its artifact store (see the module docstring)."""

    def __init__(self, client, run_id: str) -> None:
        from mlflow.store.artifact.artifact_repository_registry import (
            get_artifact_repository,
        )

        self.client = client
        self.run_id = run_id
        run = client.get_run(run_id)
        self._current: str | None = run.data.tags.get(TAG_CHECKPOINT) or None
        self._repo = get_artifact_repository(run.info.artifact_uri, tracking_uri=client.tracking_uri)

    def latest(self) -> dict | None:
        """The newest complete checkpoint, or None when the run has none, or when the file its tag
        names is not in the artifact store (a store carried to another machine without its
        artifacts): then the run starts over from epoch 0, saying so on stderr. Nothing logged is
        lost: the recomputed epochs are the stored ones (bit for bit on CPU) and the run's logger
        writes each (metric, step) once."""
        if not self._current:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = self.client.download_artifacts(self.run_id, self._current, tmp)
            except MlflowException:
                if any(f.path == self._current for f in self._repo.list_artifacts(DIR)):
                    raise  # the file is there: the store failed (a listing that fails raises too)
                print(f"run {self.run_id}: its checkpoint {self._current} is not in the artifact store; "
                      "the run starts over from epoch 0", file=sys.stderr, flush=True)
                return None
            return torch.load(path, map_location="cpu", weights_only=True)

    def save(self, state: dict, write_tags=None) -> None:
        """Upload ``state``, then commit it by the tag: through ``write_tags(tags)`` when given
        (the caller's own store write: the epoch's metrics and its checkpoint in one
        transaction), else on its own."""
        from mlflow.entities import RunTag

        name = checkpoint_name(state["epoch"])
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / Path(name).name
            torch.save(state, file)
            self._repo.log_artifact(str(file), DIR)
        tags = {TAG_CHECKPOINT: name}
        if write_tags is not None:
            write_tags(tags)
        else:
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        previous, self._current = self._current, name
        if previous and previous != self._current:
            self._delete(previous)

    def clear(self) -> None:
        """Delete every checkpoint of the run (it has finished) and its tag."""
        self._delete(DIR)
        if self._current:
            self.client.delete_tag(self.run_id, TAG_CHECKPOINT)
            self._current = None

    def _delete(self, path: str) -> None:
        with contextlib.suppress(Exception):
            self._repo.delete_artifacts(path)
