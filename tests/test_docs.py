"""Documentation ships with the code: every reference resolves to a file in the repository (or names a paper's
section), and docs/adding-a-method.md covers the hooks, the paper.yaml schema and the status tags as the code
defines them. `benchmark check` validates a method folder with errors that name the file."""
import re
import subprocess

import pytest

from benchmark import cli
from benchmark.method import Method
from benchmark.report import paper_tables
from conftest import REPO

SELF = {"tests/test_docs.py", "tests/test_cli.py"}          # these name the forbidden patterns to test for them


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    return [p for p in out if not p.startswith("reports/") and p not in SELF
            and p.endswith((".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".txt")) or p == ".ci/run"]


def test_no_reference_to_documents_that_do_not_ship():
    bad = []
    for path in _tracked():
        for n, line in enumerate((REPO / path).read_text(errors="replace").splitlines(), 1):
            if re.search(r"\bDESIGN\b|\bshared/|\bspecs?/|\bspec §|[\w-]+\.md §", line):
                bad.append(f"{path}:{n}: {line.strip()[:120]}")
                continue
            for m in re.finditer("§", line):
                before = line[max(0, m.start() - 40):m.start()]
                # a paper's section: "FLIP §3.1", "paper §3", "(CLIP §2.3)", "§3 of the paper", "§3, App. A"
                if not re.search(r"(paper|FLIP|CLIP|et al\.?|MAE|UTA)\W*$", before) and \
                        not re.match(r"§[\d.]+(,? App\. [\w.]+)?( of the paper|, App\.)", line[m.start():]) \
                        and not re.search(r"\| [^|]*$", before) and "App." not in line[m.start():m.start() + 12]:
                    bad.append(f"{path}:{n}: {line.strip()[:120]}")
    assert not bad, "references to documents that are not in the repository:\n" + "\n".join(bad)


def test_every_named_doc_file_exists():
    missing = []
    for path in _tracked():
        for ref in re.findall(r"\b((?:docs|methods/\w+)/[\w.-]+\.md)\b", (REPO / path).read_text(errors="replace")):
            if not (REPO / ref).exists() and "mymethod" not in ref:
                missing.append(f"{path}: {ref}")
    assert not missing, missing


def test_adding_a_method_covers_the_hooks_the_schema_and_the_tags():
    text = (REPO / "docs" / "adding-a-method.md").read_text()
    hooks = [n for n, v in vars(Method).items() if callable(v) or isinstance(v, classmethod)]
    overridable = {"training_step", "after_optimizer_step", "encode_image", "encode_text", "export", "requires",
                   "phases", "stats"}
    assert overridable <= set(hooks)
    for hook in overridable:
        assert f"`{hook}(" in text, hook
    for key in paper_tables.PAPER_KEYS + paper_tables.TABLE_KEYS + ("name", "ours", "method", "values", "scale"):
        assert re.search(rf"^\s+(- )?{key}:", text, re.M), f"paper.yaml field {key!r} is not in the schema"
    for key in ("task", "metric", "dataset"):                          # inside `ours`
        assert f"`{key}`" in text, key
    for tag in paper_tables.STATUS_TAGS:
        assert f"| `{tag}` |" in text, tag
    assert "benchmark check" in text and "requires_grad_(False)" in text


def _folder(root, name, paper_yaml, config="defaults:\n  mask_ratio: 0.5\n"):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "method.py").write_text(
        "from benchmark.method import Method\n"
        f"class M(Method):\n    paper = 'P'\n    summary = 'S'\n"
        "    def training_step(self, batch, progress):\n        raise NotImplementedError\n")
    (folder / "config.yaml").write_text(config)
    (folder / "paper.yaml").write_text(paper_yaml)
    (folder / "README.md").write_text("# m\n")


GOOD_PAPER = re.sub(r"method: flip@\w+", "method: null",                 # the test folder has no variants
                    (REPO / "methods" / "flip" / "paper.yaml").read_text()).replace("method: flip", "method: good")


def test_check_names_every_problem_and_the_file(tmp_path, monkeypatch, capsys):
    root = tmp_path / "methods"
    _folder(root, "good", GOOD_PAPER.replace("method: clip", "method: good"))
    _folder(root, "bad", GOOD_PAPER.replace("status: C-paper", "status: confirmed", 1))
    _folder(root, "badrow", GOOD_PAPER.replace("method: clip", "method: nosuch"))
    (root / "bad" / "README.md").unlink()
    monkeypatch.setenv("MASKBENCH_METHODS", str(root))
    assert cli.main(["check", "good"]) == 0
    assert "good: ok" in capsys.readouterr().out
    assert cli.main(["check", "good,bad", "badrow"]) == 2
    out = capsys.readouterr().out
    assert "good: ok" in out
    assert f"{root / 'bad' / 'README.md'} is missing" in out
    assert f"{root / 'bad' / 'paper.yaml'}: tables[0].status is 'confirmed'; use one of C-paper" in out
    assert "docs/adding-a-method.md" in out
    assert "tables[0].rows[0].method 'nosuch' is no method folder" in out
    assert cli.main(["check", "nosuch"]) == 2
    assert "unknown method(s) nosuch" in capsys.readouterr().err


def test_check_passes_on_every_shipped_method(capsys):
    assert cli.main(["check"]) == 0, capsys.readouterr().out
