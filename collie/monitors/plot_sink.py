"""`loss.png` in output_dir: the training loss by step and each evaluation metric, redrawn at
every checkpoint and at the end of the run (matplotlib, no display needed)."""

from __future__ import annotations

import math

from collie.monitors.sinks import Sink, replace_whole

# Columns that are not curves worth a panel.
_SKIP = {"step", "epoch", "lr", "tokens", "step_time_s", "tgs", "mfu", "mem_peak_gib", "mem_run_peak_gib"}


class LossCurveSink(Sink):
    def __init__(self, path: str, rows: list[dict] | None = None) -> None:
        self.path = path
        self.rows: list[dict] = list(rows or [])

    def write(self, row: dict) -> None:
        self.rows.append(row)

    def checkpointed(self) -> None:
        self.draw()

    def close(self) -> None:
        self.draw()

    def series(self) -> dict[str, tuple[list[int], list[float]]]:
        """name -> (steps, values) of every numeric column that has at least one value."""
        out: dict[str, tuple[list[int], list[float]]] = {}
        for row in self.rows:
            for key, value in row.items():
                if key in _SKIP or value in (None, ""):
                    continue
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    continue
                if math.isfinite(number):
                    steps, values = out.setdefault(key, ([], []))
                    steps.append(int(row["step"]))
                    values.append(number)
        return out

    def draw(self) -> None:
        series = self.series()
        if not series:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = ["loss", *sorted(k for k in series if k != "loss")] if "loss" in series else sorted(series)
        fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.6 * len(names)), sharex=True, squeeze=False)
        for axis, name in zip(axes[:, 0], names):
            steps, values = series[name]
            axis.plot(steps, values, marker="." if len(steps) < 50 else None)
            axis.set_ylabel(name)
            axis.grid(alpha=0.3)
        axes[-1, 0].set_xlabel("step")
        fig.tight_layout()
        try:
            # The temporary name ends in .png: matplotlib picks the format from it.
            replace_whole(self.path, lambda tmp: fig.savefig(tmp, dpi=100), suffix=".tmp.png")
        finally:
            plt.close(fig)
