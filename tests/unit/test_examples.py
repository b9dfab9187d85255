import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_one_sentence_overfit_generates_the_sentence():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "one_sentence_overfit.py")],
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "generated: finetuning large language models." in result.stdout
