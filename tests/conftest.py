import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("MASKBENCH_CACHE", str(Path(tempfile.gettempdir()) / "maskbench-test-cache"))
REPO = Path(__file__).resolve().parent.parent


# A minimal healthy method folder's method.py (plain CLIP through the contract), for tests that write method folders.
GOOD_METHOD = """
from benchmark.method import Method
class Good(Method):
    paper = "Good et al."
    summary = "fine"
    def training_step(self, batch, progress):
        loss = self.contrastive(self.clip.encode_image(batch["images"]), self.clip.encode_text(batch["texts"]))
        return {"loss": loss}
"""


def run_cli(*args, env=None, check=False, timeout=600) -> subprocess.CompletedProcess:
    """``python -m benchmark ARGS`` in a subprocess, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", "benchmark", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def smoke_scale():
    from benchmark.scales import get_scale
    return get_scale("smoke")
