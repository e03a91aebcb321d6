"""The README's walkthrough for adding a method works exactly as written."""
import ast
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, run_cli

pytestmark = pytest.mark.slow       # a CLI run and a pytest run in subprocesses


def contract_tests_per_method() -> list[str]:
    """The tests of tests/test_contract.py parametrised over the methods (``METHODS``): each runs once on a new
    folder (the variant tests run once per declared variant: the walkthrough's copy keeps CLIP's ``wide``)."""
    tree = ast.parse((REPO / "tests" / "test_contract.py").read_text())

    def over_methods(f):
        return any(isinstance(d, ast.Call) and ast.unparse(d.func) == "pytest.mark.parametrize"
                   and [ast.unparse(a) for a in d.args] == ["'name'", "METHOD_PARAMS"] for d in f.decorator_list)
    return [f.name for f in tree.body if isinstance(f, ast.FunctionDef) and f.name.startswith("test_")
            and over_methods(f)]


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
    passed = re.search(r"\b(\d+) passed\b", tests.stdout)
    variants = yaml.safe_load((methods / "mymethod" / "config.yaml").read_text()).get("variants") or {}
    assert list(variants) == ["wide"]                     # CLIP's, copied in step 1 (step 3: keep it or delete it)
    assert passed and int(passed.group(1)) == len(contract_tests_per_method()) + len(variants), tests.stdout[-3000:]
    assert not re.search(r"\b(failed|errors?|skipped)\b", tests.stdout), tests.stdout[-3000:]
