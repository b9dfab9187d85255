import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_gpu_throughput_dry_run_prints_the_table():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_throughput.py"), "--dry-run"],
                            capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("shape"))
    rows = lines[header + 1:]
    assert [row.split()[:2] for row in rows] == [["tiny", runner]
                                                 for runner in ("transformers", "adamw", "adamw_compile", "lomo")]
    assert all(float(row.split()[3]) > 0 for row in rows)  # tokens/s measured
    # The TGS ratio to the transformers Trainer row: the quotient of the printed TGS figures.
    base = float(rows[0].split()[3])
    assert rows[0].split()[-1] == "1.00x"
    for row in rows[1:]:
        assert abs(float(row.split()[-1].rstrip("x")) - float(row.split()[3]) / base) <= 0.006, row
