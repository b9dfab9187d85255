"""benchmarks/gpu_suite.py on CPU: its dry run produces every row of the table through the
rows' own code paths, with ratios that are the quotients of the printed figures; without CUDA
and without --dry-run it refuses in one line."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_suite.py")
# The published figures the suite compares with: the LOMO paper's 7B peak, CoLLiE's TGS.
LOMO_PAPER_GIB, COLLIE_TGS = 14.58, 832.5
# A row of each kind of figure. The 7B training rows are the 1B ones at another shape, the two
# `compile: true` rows add only torch.compile's minutes on a CPU, and the QLoRA row's peak is
# measured as the LOMO row's (tests/unit/test_qlora.py covers its training), so CI leaves them out.
ONLY = "train_1b_transformers,train_1b_adamw,lomo_memory,serve,seed_004"
ROWS = [("train", "tiny(1b)", "transformers_Trainer"), ("train", "tiny(1b)", "collie_adamw"),
        ("lomo_memory", "tiny(7b)", "collie_lomo_b8x512"), ("serve", "tiny(1b)", "collie_engine_64req"),
        ("seed_004", "tiny(7b)", "collie_lomo_b3x1024")]


def _run(*args: str, timeout: int) -> subprocess.CompletedProcess:
    # No GPU, whatever the machine has: the refusal and the dry run are the CPU paths.
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=timeout, env=env)


def _table(stdout: str) -> list[list[str]]:
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("row "))
    end = lines.index("", header)
    return [line.split() for line in lines[header + 1:end]]


def _close(printed: float, numerator: float, numerator_step: float, denominator: float, denominator_step: float) -> bool:
    """`printed` (3 decimals) is numerator / denominator, both printed rounded to their steps."""
    quotient = numerator / denominator
    slack = quotient * (numerator_step / 2 / numerator + denominator_step / 2 / denominator)
    return abs(printed - quotient) <= 0.0005 + slack + 1e-9


def test_dry_run_prints_every_row_with_its_ratio():
    result = _run("--dry-run", "--only", ONLY, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _table(result.stdout)
    assert [tuple(fields[:3]) for fields in rows] == ROWS, result.stdout
    by_config = {(fields[0], fields[1], fields[2]): fields for fields in rows}
    for fields in rows:
        tgs, mfu, peak, memory = float(fields[3]), fields[4], float(fields[5]), fields[6]
        assert tgs > 0 and peak > 0, fields
        assert memory == "rss", fields  # no CUDA: the process's peak RSS, labelled so
        assert mfu in ("n/a", "-"), fields  # no peak FLOP/s for a CPU
        if fields[0] in ("qlora_memory", "serve"):
            assert fields[7:] == ["-"], fields
            continue
        ratio = float(fields[7].rstrip("x"))
        assert ratio > 0, fields
        if fields[0] == "train":
            assert fields[8:] == ["of", "transformers_Trainer"], fields
            base = float(by_config[("train", fields[1], "transformers_Trainer")][3])
            assert _close(ratio, tgs, 0.1, base, 0.1), fields
        elif fields[0] == "lomo_memory":
            assert fields[8:11] == ["of", str(LOMO_PAPER_GIB), "GiB"], fields
            assert _close(ratio, peak, 0.01, LOMO_PAPER_GIB, 0), fields
        else:
            assert fields[8:11] == ["of", str(COLLIE_TGS), "TGS"], fields
            assert _close(ratio, tgs, 0.1, COLLIE_TGS, 0), fields
    assert by_config[("train", "tiny(1b)", "transformers_Trainer")][7] == "1.000x"
    assert "device: cpu" in result.stdout.splitlines()


def test_without_cuda_it_refuses_in_one_line():
    result = _run(timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "gpu_suite.py: needs a CUDA GPU (torch.cuda.is_available() is False); --dry-run checks the plumbing on CPU"]
