"""The packing throughput benchmark's dry run measures both sides and prints their ratio."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_packing_benchmark_dry_run_ratio_is_the_quotient():
    result = subprocess.run([sys.executable, os.path.join("benchmarks", "packing_throughput.py"), "--dry-run"],
                            cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    rates = {m.group(1).strip(): float(m.group(2)) for line in lines
             if (m := re.match(r"^(transformers Trainer, padding|collie, packing)\s+[\d.]+s\s+([\d.]+)$", line))}
    assert set(rates) == {"transformers Trainer, padding", "collie, packing"}, lines
    ratio = float(lines[-1].split(":")[1])
    expected = rates["collie, packing"] / rates["transformers Trainer, padding"]
    assert abs(ratio - expected) <= 0.005 + 0.05 / rates["transformers Trainer, padding"] * (1 + expected), lines
