"""The memory benchmarks' dry runs: every configuration runs in its own process and reports,
and the tables carry the ratio and goal columns that BENCHMARKS.md quotes."""

from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RATIO = r"\d+\.\d+x"


def _dry_run(script: str) -> list[str]:
    result = subprocess.run([sys.executable, os.path.join("benchmarks", script), "--dry-run"], cwd=ROOT,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.splitlines()


def _rows(lines: list[str], name: str) -> list[str]:
    return [line for line in lines if line.split() and line.split()[0] == name]


def test_memory_dry_run_reports_every_run_and_the_goals() -> None:
    lines = _dry_run("memory.py")
    for name in ("transformers_adamw", "collie_adamw", "collie_lomo", "collie_adalomo", "collie_lomo_bf16",
                 "collie_adalomo_bf16"):
        rows = _rows(lines, name)
        assert len(rows) == 1, (name, lines)
        assert re.search(rf"\d+\.\d+ GiB +{RATIO}", rows[0]), rows[0]
    assert re.fullmatch(r"goals: LOMO <= 0\.30x: (met|not met) \(collie_lomo_bf16 .*\); "
                        r"AdaLomo <= 0\.35x: (met|not met) \(collie_adalomo_bf16 .*\)", lines[-1]), lines[-1]


def test_seven_b_dry_run_reports_run_baseline_and_goal() -> None:
    lines = _dry_run("seven_b.py")
    for name in ("collie_lomo_bf16", "transformers_adamw"):
        rows = _rows(lines, name)
        assert len(rows) == 1, (name, lines)
        assert re.search(rf"\d+\.\d+ GiB +{RATIO}", rows[0]), rows[0]
    assert re.fullmatch(r"goal: peak RSS < 20 GB: met \(\d+\.\d+ GB\)", lines[-1]), lines[-1]
