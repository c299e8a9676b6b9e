"""Test-only fault-injection hook, put on ``PYTHONPATH`` by ``tests.runs.Cli``.

With ``VAEBENCH_TEST_CHECKPOINT_PAUSE_S`` set, every checkpoint save sleeps that long afterwards,
in whichever process saves it (the driver with ``--jobs 1``, a worker, a submitit job). The tests
that kill or preempt a run between two checkpoints then get a window of that length on any machine:
on a quiet machine the tiny run's 12 epochs could finish before a 50 ms poll saw it RUNNING with a
checkpoint. Sleeping changes no number: the resumed histories are still compared bit for bit.
"""
import os

_PAUSE = float(os.environ.get("VAEBENCH_TEST_CHECKPOINT_PAUSE_S", "0") or 0)

if _PAUSE > 0:
    import time

    from bench.store import checkpoints

    _save = checkpoints.ArtifactCheckpoints.save

    def _save_then_pause(self, state, write_tags=None):
        _save(self, state, write_tags=write_tags)
        time.sleep(_PAUSE)

    checkpoints.ArtifactCheckpoints.save = _save_then_pause
