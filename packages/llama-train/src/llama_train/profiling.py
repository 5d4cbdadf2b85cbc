"""``--profile-steps A-B``: Paddle's profiler around steps A to B, nothing before or after.

The profiler is created when step A starts and stopped when step B ends, so the other steps run
exactly as without the option. Each rank writes a Chrome trace (open it in ``chrome://tracing`` or
Perfetto) to ``OUTPUT/profile/step-A-B/rank-N/``; rank 0 also writes the operator table to
``summary.txt`` beside the ranks' folders and prints it once.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from llama_train.options import parse_profile_steps


class StepProfiler:
    def __init__(self, spec: str | None, output: str, rank: int, on_gpu: bool):
        self.range = parse_profile_steps(spec) if spec else None
        self.rank, self.on_gpu = rank, on_gpu
        if self.range:
            first, last = self.range
            self.directory = Path(output) / "profile" / f"step-{first}-{last}"
        self._profiler = None

    def before_step(self, step: int) -> None:
        if self.range is None or step != self.range[0]:
            return
        import paddle.profiler as profiler

        targets = [profiler.ProfilerTarget.CPU]
        if self.on_gpu:
            targets.append(profiler.ProfilerTarget.GPU)
        trace_dir = self.directory / f"rank-{self.rank}"
        self._profiler = profiler.Profiler(
            targets=targets,
            on_trace_ready=profiler.export_chrome_tracing(str(trace_dir), f"rank-{self.rank}"),
        )
        self._profiler.start()

    def after_step(self, step: int) -> list[str]:
        """Stop after the last profiled step; returns the operator table's lines (rank 0)."""
        if self._profiler is None:
            return []
        self._profiler.step()
        if step != self.range[1]:
            return []
        import paddle.profiler as profiler

        self._profiler.stop()
        table = io.StringIO()
        with contextlib.redirect_stdout(table):
            self._profiler.summary(
                sorted_by=profiler.SortedKeys.CPUTotal,
                op_detail=False,
                time_unit="ms",
                views=profiler.SummaryView.OperatorView,
            )
        self._profiler = None
        if self.rank != 0:
            return []
        text = table.getvalue()
        (self.directory / "summary.txt").write_text(text)
        return [line for line in text.splitlines() if line.strip()]
