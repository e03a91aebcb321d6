"""The README's walkthrough for adding a method works exactly as written."""
import os
import re
import shutil
import subprocess
import sys

from conftest import REPO, run_cli


def test_adding_a_method_as_the_readme_says(tmp_path):
    readme = (REPO / "README.md").read_text()
    code = re.search(r"<!-- walkthrough:method.py -->\s*```python\n(.*?)```", readme, re.S).group(1)
    methods = tmp_path / "methods"
    shutil.copytree(REPO / "methods" / "clip", methods / "clip")
    shutil.copytree(REPO / "methods" / "clip", methods / "mymethod")          # step 1
    (methods / "mymethod" / "method.py").write_text(code)                    # step 2
    env = {"MASKBENCH_METHODS": str(methods)}
    out = run_cli("list", env=env, check=True).stdout                         # step 4
    assert "mymethod" in out and "checkerboard" in out
    proc = run_cli("run", "--methods", "mymethod", "--scale", "smoke", "--cluster", "debug", "--results",
                   tmp_path / "results", "--no-report", env=env, check=True)
    metrics = (tmp_path / "results" / "smoke" / "mymethod" / "seed0" / "metrics.json")
    assert metrics.exists(), proc.stdout
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", str(REPO / "tests" / "test_contract.py"),
                            "-k", "mymethod", "-p", "no:cacheprovider"], cwd=REPO, capture_output=True, text=True,
                           env={**os.environ, **env})
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert re.search(r"\b5 passed\b", tests.stdout) and "failed" not in tests.stdout, tests.stdout[-3000:]
