"""Suite progress on stderr.

On a terminal: finished runs scroll up as permanent lines; below them a live block, redrawn in
place, with one line for the suite (runs done / running / failed / to go, elapsed, ETA) and one
line per running run (its latest epoch). In logs (not a terminal): plain lines, a run's epochs 1,
every tenth and the last, its end, and the suite line every :data:`EVERY_S` seconds.

The ETA counts epochs: (elapsed) x (epochs to go) / (epochs done here), over the runs this
invocation computes (reused runs cost nothing); final evaluations are not epochs, so it is rough
while they run.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass

EVERY_S = 30.0


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def run_line(epoch: int, epochs: int, row: dict[str, float] | None) -> str:
    """A run's progress line: the epoch, its training bound, validation ELBO and throughput; the
    epoch alone without its values; after the final evaluation (``epoch < 0``) the test ELBO, the
    test log-likelihood and the evaluation's throughput (a search trial's: none, it has no test)."""
    if epoch < 0 and row and "test/elbo" not in row:
        return "trained (a search trial: validation only)"
    if epoch < 0 and row:
        log_px = f"test/log_px {row['test/log_px']:.3f}" if "test/log_px" in row else "test/log_px skipped"
        return f"test/elbo {row['test/elbo']:.3f}  {log_px}  ({row['perf/eval_examples_per_s']:,.0f} eval ex/s)"
    if not row:
        return f"epoch {epoch:>3}/{epochs}"
    return (f"epoch {epoch:>3}/{epochs}  train {-row['train/loss']:9.3f}  val/elbo {row['val/elbo']:9.3f}  "
            f"{row['train/examples_per_s']:10,.0f} ex/s")


@dataclass
class _Run:
    label: str
    epochs: int
    start_epoch: int = 0
    epoch: int = 0
    line: str = "starting"


class SuiteProgress:
    def __init__(self, suite: str, to_run: int, reused: int, stream=None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.suite = suite
        self.total, self.reused = to_run, reused
        self.done = self.failed = 0
        self.running: dict[str, _Run] = {}
        self.epochs_total = self.epochs_done = 0
        self.t0 = time.monotonic()
        self._block = 0  # lines of the live block on screen
        self._last_line = 0.0

    # -- events ----------------------------------------------------------------------------------
    def plan_epochs(self, epochs: int) -> None:
        """Add a run's epochs still to compute to the ETA's total."""
        self.epochs_total += epochs

    def start(self, run_id: str, label: str, epochs: int, start_epoch: int = 0) -> None:
        self.running[run_id] = _Run(label, epochs, start_epoch, start_epoch)
        if not self.tty:
            self.print(f"{label} started" + (f" (resumed after epoch {start_epoch})" if start_epoch else ""))
        self.tick()

    def update(self, run_id: str, epoch: int, row: dict[str, float] | None = None) -> None:
        """A run's epoch done, with its logged values (``bench.train.run``'s ``on_epoch``; ``None``
        where only the epoch is known: a remote worker's ``vaebench.epoch`` tag); ``epoch < 0``: its
        final evaluation."""
        r = self.running.get(run_id)
        if r is None:
            return
        line = run_line(epoch, r.epochs, row)
        if epoch > r.epoch:
            self.epochs_done += epoch - max(r.epoch, r.start_epoch)
            r.epoch = epoch
        r.line = line
        if not self.tty:
            every = max(1, r.epochs // 10)
            if epoch < 0 or epoch in (1, r.epochs) or epoch % every == 0:
                self.print(f"{r.label} {line}")
        self.tick()

    def finish(self, run_id: str, ok: bool, line: str) -> None:
        r = self.running.pop(run_id, None)
        if r is not None:
            self.epochs_done += max(0, r.epochs - max(r.epoch, r.start_epoch))
        self.done += ok
        self.failed += not ok
        self.print(line)
        if not self.tty:
            self.print(self.suite_line())
        self.tick()

    def drop(self, run_id: str, line: str) -> None:
        """A run no longer executed here (another invocation took it over)."""
        r = self.running.pop(run_id, None)
        if r is not None:
            self.epochs_done -= max(0, r.epoch - r.start_epoch)
        self.print(line)

    # -- output ----------------------------------------------------------------------------------
    def suite_line(self) -> str:
        elapsed = time.monotonic() - self.t0
        to_go = self.total - self.done - self.failed - len(self.running)
        eta = "?"
        if self.epochs_done > 0 and self.epochs_total:
            eta = _clock(elapsed * max(0, self.epochs_total - self.epochs_done) / self.epochs_done)
        reused = f", {self.reused} reused" if self.reused else ""
        return (f"suite {self.suite}: {self.done} done, {len(self.running)} running, {self.failed} failed, "
                f"{to_go} to go{reused}; elapsed {_clock(elapsed)}, ETA {eta}")

    def print(self, line: str) -> None:
        """A permanent line (above the live block on a terminal)."""
        self._clear()
        print(line, file=self.stream, flush=True)
        self._draw()

    def tick(self) -> None:
        """Redraw the live block (terminal), or the periodic suite line (logs)."""
        if self.tty:
            self._clear()
            self._draw()
        elif time.monotonic() - self._last_line >= EVERY_S:
            self._last_line = time.monotonic()
            print(self.suite_line(), file=self.stream, flush=True)

    def close(self) -> None:
        self._clear()

    def _clear(self) -> None:
        if self.tty and self._block:
            self.stream.write(f"\x1b[{self._block}F\x1b[J")  # to the block's first line, erase below
            self._block = 0

    def _draw(self) -> None:
        if not self.tty:
            return
        width = shutil.get_terminal_size().columns - 1  # a wrapped line would break the redraw
        lines = [self.suite_line()] + [f"  {r.label} {r.line}" for r in self.running.values()]
        lines = [line[:width] for line in lines]
        self.stream.write("".join(line + "\n" for line in lines))
        self.stream.flush()
        self._block = len(lines)
