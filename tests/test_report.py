"""Reports (docs/design.md, "Reports"): after a smoke run of clip and flip with two seeds, every output exists and its
numbers are the ones in results.csv (recomputed here with pandas); paper tables follow paper.yaml; the page
renders in headless Chromium with every image loaded. Incomplete results are built by hand (a failed run, a run
still going, a task error, a multi-dataset task) and must appear as such."""
from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from benchmark import cli
from benchmark.errors import UserError
from benchmark.report import paper_tables, write_reports
from benchmark.results import rebuild_csv
from conftest import REPO

PLOTS = ("task_bars.png", "accuracy_vs_flops.png", "loss_vs_flops.png", "throughput_vs_mask.png")


# ---- the smoke run (module fixture, ~30 s) ----------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    results, reports = root / "results", root / "reports"
    assert cli.main(["run", "--methods", "clip,flip", "--scale", "smoke", "--seeds", "0", "1", "--cluster", "debug",
                     "--results", str(results), "--no-report"]) == 0
    assert cli.main(["report", "--scale", "smoke", "--results", str(results), "--reports", str(reports)]) == 0
    return results, reports / "smoke"


def _per_run_main(results: Path) -> pd.DataFrame:
    """Main metric per (method, seed, task): the mean over the task's datasets, in %."""
    df = pd.read_csv(results / "smoke" / "results.csv")
    main = df[df["main"]]
    return main.groupby(["method", "seed", "task"])["value"].mean().mul(100).reset_index()


def _expected(results: Path) -> pd.DataFrame:
    return (_per_run_main(results).groupby(["method", "task"])["value"].agg(["mean", "std", "count"])
            .reset_index())


def _md_rows(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """Header cells and {first cell: cells} of the first Markdown table in ``text``."""
    lines = []
    for ln in text.splitlines():
        if ln.startswith("|"):
            lines.append(ln)
        elif lines:
            break                                           # the first table only
    split = [[c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in lines]
    header, body = split[0], split[2:]
    return header, {r[0]: r for r in body}


@pytest.mark.slow
def test_every_output_exists(smoke):
    results, out = smoke
    for name in ("summary.md", "summary.tex", "summary.csv", "index.html", "paper_clip.md", "paper_flip.md",
                 *PLOTS):
        assert (out / name).stat().st_size > 0, name
    methods = set(pd.read_csv(results / "smoke" / "results.csv")["method"])
    assert {p.name for p in out.glob("paper_*.md")} == {f"paper_{m}.md" for m in methods}


@pytest.mark.slow
def test_summary_csv_matches_results_csv(smoke):
    results, out = smoke
    summary = pd.read_csv(out / "summary.csv", index_col="method")
    exp = _expected(results)
    assert len(exp) >= 4                              # 2 methods x (zero-shot classification, retrieval) at least
    for _, e in exp.iterrows():
        mean_col = next(c for c in summary.columns if c.startswith(f"{e['task']} ") and c.endswith("mean (%)"))
        std_col = mean_col.replace("mean (%)", "std (%)")
        assert summary.loc[e["method"], mean_col] == pytest.approx(e["mean"], abs=1e-9)
        assert summary.loc[e["method"], std_col] == pytest.approx(e["std"], abs=1e-9)
        assert summary.loc[e["method"], f"{e['task']} seeds"] == e["count"] == 2
    # compute columns: mean over each method's runs
    runs = pd.read_csv(results / "smoke" / "results.csv").drop_duplicates(["method", "seed"])
    for method, g in runs.groupby("method"):
        for col in ("train_flops", "samples_seen", "wall_time_s", "images_per_s"):
            assert summary.loc[method, col] == pytest.approx(g[col].mean(), rel=1e-9), (method, col)
    # chance row: the mean chance of each task's datasets, in %
    df = pd.read_csv(results / "smoke" / "results.csv")
    chance = df[df["main"]].drop_duplicates(["task", "dataset"]).groupby("task")["chance"].mean() * 100
    for task, value in chance.items():
        col = next(c for c in summary.columns if c.startswith(f"{task} ") and c.endswith("mean (%)"))
        assert summary.loc["chance", col] == pytest.approx(value)


@pytest.mark.slow
def test_summary_markdown_and_latex_show_the_same_numbers(smoke):
    from scipy import stats as st
    results, out = smoke
    md, tex = (out / "summary.md").read_text(), (out / "summary.tex").read_text()
    header, rows = _md_rows(md)
    per_run = _per_run_main(results)
    for (method, task), g in per_run.groupby(["method", "task"]):
        v = g["value"]
        low, high = st.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=st.sem(v)) if v.std() > 0 else \
            (v.mean(), v.mean())                                           # recomputed here; equal seeds: no spread
        text = f"{v.mean():.1f} [{low:.1f}, {high:.1f}] (n={len(v)})"
        col = next(i for i, h in enumerate(header) if h.startswith(task))
        assert text in rows[method][col], (task, method, rows[method][col])
        tex_row = next(ln for ln in tex.splitlines() if ln.startswith(f"{method} &"))
        assert text in tex_row.replace(r"\textbf{", "")
    # the winner rule: bold only where the seed-paired interval of best − runner-up lies above 0
    for task, g in per_run.groupby("task"):
        wide = g.pivot(index="seed", columns="method", values="value")
        top, runner = wide.mean().sort_values(ascending=False).index[:2]
        d = wide[top] - wide[runner]
        low = st.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=st.sem(d))[0] if d.std() > 0 else d.mean()
        bold = bool(low > 0)
        col = next(i for i, h in enumerate(header) if h.startswith(task))
        assert rows[top][col].startswith("**") == bold, (task, rows[top][col])
        assert not rows[runner][col].startswith("**")
    assert "chance" in rows and r"\begin{tabular}" in tex
    assert "Student-t interval over seeds" in md and "Values in %" in md and "Ranking rule" in md
    assert md.startswith("# Summary at scale `smoke`, compute matched on training FLOPs (`--match flops`)")
    assert "Single seed" not in md                        # two seeds everywhere: no n=1 warning
    # the Δ vs CLIP table: flip − clip per seed, with the t interval
    deltas = md.split("## Difference to CLIP, paired by seed")[1]
    h2, r2 = _md_rows(deltas)
    for task, g in per_run.groupby("task"):
        wide = g.pivot(index="seed", columns="method", values="value")
        d = wide["flip"] - wide["clip"]
        col = next(i for i, h in enumerate(h2) if h.startswith(task))
        assert r2["flip"][col].startswith(f"{d.mean():+.1f} [") and r2["flip"][col].endswith("(n=2)")


@pytest.mark.slow
def test_summary_csv_carries_the_bounds_and_the_header_the_provenance(smoke):
    results, out = smoke
    csv = pd.read_csv(out / "summary.csv", index_col="method")
    for kind in ("low", "high", "Δ clip", "Δ clip low", "Δ clip high"):
        assert any(c.startswith("zeroshot_classification ") and f" {kind} (%)" in c for c in csv.columns), kind
    col = next(c for c in csv.columns if c.startswith("zeroshot_classification") and c.endswith(" low (%)")
               and "Δ" not in c and "items" not in c)
    assert csv.loc["clip", col] <= csv.loc["clip", col.replace(" low (%)", " mean (%)")]
    assert (csv.loc[["clip", "flip"], "total_flops"] == csv.loc[["clip", "flip"], "train_flops"]).all()
    md = (out / "summary.md").read_text()
    head = json.loads((out / "provenance.json").read_text())
    assert head["command"].startswith("python -m benchmark report --scale smoke")
    assert f"by commit `{head['report_commit']}`" in md and "torch threads" in md and "Wall time:" in md
    assert head["runs"] == 4 and head["machines"] and head["train_wall_time_s"] > 0


@pytest.mark.slow
def test_paper_tables_follow_paper_yaml_with_ours_beside(smoke):
    results, out = smoke
    per_run = _per_run_main(results)
    zs = per_run[per_run["task"] == "zeroshot_classification"].set_index(["method", "seed"])["value"]
    for method in ("clip", "flip"):
        text = (out / f"paper_{method}.md").read_text()
        raw = yaml.safe_load((REPO / "methods" / method / "paper.yaml").read_text())
        assert raw["paper"]["title"] in text
        for table in raw["tables"]:
            assert table["source"] in text and table["setting"] in text
            header, rows = _md_rows(text.split(f"## {table['id']}:")[1])
            for row in table["rows"]:                     # every published row and number, as published
                cells = rows[row["name"]]
                for value in (row["values"] or {}).values():
                    if value is not None:
                        assert str(value) in cells, (table["id"], row["name"], value)
            assert "differs from the paper's" in text     # smoke is never a paper's scale
    # FLIP Table 2 at smoke: no number of ours under the paper's column; Δ vs CLIP paired by seed beside the
    # paper's Δ, with the sign agreement
    text = (out / "paper_flip.md").read_text().split("## table2:")[1].split("## ")[0]
    header, rows = _md_rows(text)
    assert "B/16: ours" not in header and "B/16: ours − paper" not in header
    col_delta = header.index("B/16: ours Δ vs CLIP")
    col_pdelta = header.index("B/16: paper Δ vs CLIP")
    col_sign = header.index("B/16: signs agree")
    flip_row = rows["FLIP"]
    delta = zs["flip"] - zs["clip"]
    assert flip_row[col_delta].startswith(f"{delta.mean():+.1f} [") and flip_row[col_delta].endswith("(n=2)")
    assert flip_row[col_pdelta] == "-0.2"                 # 68.0 - 68.2, the paper's own difference (Table 1a's 32k row is flip@batch2x)
    assert flip_row[col_sign] in ("yes", "no", "undecided (our interval includes 0)")
    assert rows["CLIP, FLIP authors' repro."][col_delta] == "baseline"
    assert "Ranking on 'B/16' (by mean): paper clip > flip; ours" in text
    # CLIP's own table (CC3M / CC12M / YFCC-15M): no smoke number under any of the paper's dataset columns
    clip = (out / "paper_clip.md").read_text()
    for line in clip.splitlines():
        if line.startswith("|") and "CC12M" in clip:
            assert ": ours" not in line
    assert "reproduction gap" not in clip


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.slow
def test_plots_are_pngs_embedded_in_the_page(smoke):
    _, out = smoke
    page = (out / "index.html").read_text()
    for name in PLOTS:
        w, h = _png_size(out / name)
        assert w >= 600 and h >= 400, (name, w, h)
        assert f'data-file="{name}"' in page
    assert page.count('src="data:image/png;base64,') == len(PLOTS)
    assert "<script" not in page and "http://" not in page.split("<body>")[0]   # no server, nothing fetched


CHECK_IMAGES = """<script>window.addEventListener("load", function () {
  var out = [];
  document.querySelectorAll("img").forEach(function (i) {
    out.push([i.getAttribute("data-file"), i.complete, i.naturalWidth, i.naturalHeight].join(","));
  });
  var pre = document.createElement("pre"); pre.id = "imgcheck"; pre.textContent = out.join("\\n");
  document.body.appendChild(pre);
});</script>"""


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="needs Debian's `chromium` package (apt-get install -y chromium)")
def test_index_html_renders_in_headless_chromium_with_every_image_loaded(smoke, tmp_path):
    _, out = smoke
    page = (out / "index.html").read_text()
    # A copy with a script that writes each image's decoded size into the DOM, plus one broken image to show
    # that the check catches an image that does not load.
    probe = out / "_imgcheck.html"
    broken = '<img data-file="broken" src="data:image/png;base64,AAAA">'
    probe.write_text(page.replace("</body>", broken + CHECK_IMAGES + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=15000"]
    try:
        dom = subprocess.run([_chromium(), *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True,
                             timeout=180).stdout
        shot = tmp_path / "index.png"
        subprocess.run([_chromium(), *flags, "--window-size=1400,3000", f"--screenshot={shot}",
                        (out / "index.html").as_uri()], capture_output=True, timeout=180, cwd=tmp_path)
    finally:
        probe.unlink()
    found = re.search(r'<pre id="imgcheck">(.*?)</pre>', dom, re.S)
    assert found, "the page did not finish loading in Chromium"
    seen = {}
    for line in found.group(1).strip().splitlines():
        name, complete, w, h = line.split(",")
        seen[name] = (complete, int(w), int(h))
    assert seen.pop("broken")[1] == 0                     # the check sees a broken image
    assert set(seen) == set(PLOTS)
    for name, (complete, w, h) in seen.items():
        assert complete == "true" and (w, h) == _png_size(out / name), (name, complete, w, h)
    assert "Summary" in dom and "Paper tables" in dom and "Incomplete results" in dom
    assert _png_size(shot) == (1400, 3000)


def test_report_of_missing_results_exits_2_naming_the_folder(tmp_path):
    assert cli.main(["report", "--scale", "smoke", "--results", str(tmp_path / "none")]) == 2
    with pytest.raises(UserError, match="python -m benchmark run --scale smoke"):
        write_reports(tmp_path / "none", "smoke", tmp_path / "reports")
    (tmp_path / "empty" / "pocket").mkdir(parents=True)
    with pytest.raises(UserError, match="holds no runs"):
        write_reports(tmp_path / "empty", "pocket", tmp_path / "reports")


# ---- hand-built results: incomplete runs, task errors, a task with two datasets ---------------------------

def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)


def _fake_run(results: Path, method: str, seed: int, scores: dict, errors: dict = (), mask: float = 0.0,
              ips: float = 100.0, scale: str = "smoke") -> None:
    """A finished run: scores = {task: {dataset: main value}}; errors = {task: message}."""
    run = results / scale / method / f"seed{seed}"
    flops = 1e9 * (1 - mask / 2)
    compute = {"steps": 10, "samples_seen": 320, "train_flops": flops * 10, "flops_per_step": flops,
               "wall_time_s": 320 / ips, "images_per_s": ips, "match": "flops"}
    ident = {"method": method, "seed": seed, "config_hash": f"{method}{seed}", "code_version": "abc",
             "scale": scale}
    _write(run / "config.json", {"config_hash": f"{method}{seed}", "identity": {"match": "flops"},
                                 "code_version": "abc"})
    history = [{"step": 5, "samples": 160, "train_flops": flops * 5, "task": "zeroshot_classification",
                "dataset": "embedded/zeroshot_classification", "acc1": 0.1 + seed / 100}]
    _write(run / "metrics.json", {"compute": compute, "history": history, "stats": {"mask_ratio": mask},
                                  "config_hash": f"{method}{seed}"})
    _write(run / "train.jsonl", "".join(json.dumps({"step": s, "mask_ratio": mask}) + "\n" for s in (1, 10)))
    for task, per_dataset in scores.items():
        for dataset, value in per_dataset.items():
            _write(run / "evals" / f"{task}.{dataset.replace('/', '_')}.json",
                   {"dataset": dataset, "task": task, "metrics": {"acc": value, "other": value / 2},
                    "main_metric": "acc", "chance": 0.25, "run": ident, "compute": compute})
    for task, message in dict(errors).items():
        _write(run / "evals" / f"{task}.json", {"task": task, "error": message, "run": ident})


def _paper_yaml(root: Path) -> Path:
    for m in ("clip", "flip"):
        (root / m).mkdir(parents=True, exist_ok=True)
    (root / "flip" / "paper.yaml").write_text(yaml.safe_dump({
        "paper": {"title": "FLIP test", "authors": "A", "venue": "V", "url": "u", "code": "c"},
        "tables": [{"id": "t1", "title": "T1", "source": "Table 1", "status": "C-paper", "setting": "LAION-400M",
                    "columns": [{"name": "A", "ours": {"task": "zeroshot_classification", "metric": "acc"}},
                                {"name": "B"}],
                    "rows": [{"name": "CLIP row", "method": "clip", "values": {"A": 50.0, "B": 1.25}},
                             {"name": "FLIP row", "method": "flip", "values": {"A": 52.5, "B": None}},
                             {"name": "UTA row", "method": "uta", "values": {"A": 53.0}},
                             {"name": "other", "method": None, "values": {"A": 49.0}}]}]}))
    (root / "clip" / "paper.yaml").write_text("paper: {title: broken}\n")     # invalid: said, not dropped
    return root


@pytest.fixture(scope="module")
def handmade(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("handmade")
    results = tmp_path / "results"
    zs = "embedded/zeroshot_classification"
    comp = {"sugar/a": 0.6, "sugar/b": 0.8}
    _fake_run(results, "clip", 0, {"zeroshot_classification": {zs: 0.40}, "compositionality": comp})
    _fake_run(results, "clip", 1, {"zeroshot_classification": {zs: 0.44},
                                   "compositionality": {"sugar/a": 0.5, "sugar/b": 0.9}})
    _fake_run(results, "flip", 0, {"zeroshot_classification": {zs: 0.50},
                                   "compositionality": {"sugar/a": 0.5, "sugar/b": 0.7}}, mask=0.5,
              ips=180.0)
    _fake_run(results, "flip", 1, {"zeroshot_classification": {zs: 0.46}}, mask=0.5, ips=200.0,
              errors={"compositionality": "FileNotFoundError: no sugar\nsecond line"})
    failed = results / "smoke" / "uta" / "seed0"
    _write(failed / "config.json", {"config_hash": "x"})
    _write(failed / "error.json", {"error": "RuntimeError: teacher missing", "traceback": "..."})
    going = results / "smoke" / "uta" / "seed1"
    _write(going / "config.json", {"config_hash": "y"})
    _write(going / "train.jsonl", json.dumps({"step": 3, "mask_ratio": 0.5}) + "\n")
    _write(going / "checkpoints" / "step_0000003.pt", "x")
    rebuild_csv(results, "smoke")
    out = write_reports(results, "smoke", tmp_path / "reports", methods=_paper_yaml(tmp_path / "methods"))
    return results, out


def test_incomplete_results_are_shown_never_dropped(handmade):
    results, out = handmade
    md = (out / "summary.md").read_text()
    header, rows = _md_rows(md)
    comp = next(i for i, h in enumerate(header) if h.startswith("compositionality"))
    zs = next(i for i, h in enumerate(header) if h.startswith("zeroshot_classification"))
    # flip: compositionality from seed 0 only, seed 1 flagged
    assert rows["flip"][comp] == "60.0 (n=1) [seed 1: task error]"
    # uta: no number anywhere, each cell says why; the runs column counts the states
    assert rows["uta"][zs] == "seed 0: failed; seed 1: incomplete"
    assert rows["uta"][header.index("runs")] == "0/2 done, 1 failed, 1 incomplete"
    issues = md.split("## Incomplete results")[1]
    assert "RuntimeError: teacher missing" in issues and "step_0000003.pt" in issues
    assert "FileNotFoundError: no sugar" in issues and "second line" not in issues
    csv = pd.read_csv(out / "summary.csv", index_col="method")
    assert csv.loc["flip", "compositionality seeds"] == 1
    assert csv.loc["flip", "compositionality incomplete"] == "seed 1: task error"
    assert csv.loc["uta", "zeroshot_classification seeds"] == 0
    page = (out / "index.html").read_text()
    assert 'class="warn"' in page and "teacher missing" in page and "seed 1: incomplete" in page
    # a task of the scale's suite that a finished run has no result for is listed as missing
    from benchmark.scales import get_scale
    for task in get_scale("smoke").eval_suite:
        assert any(h.startswith(task) for h in header), task
    lp = next(i for i, h in enumerate(header) if h.startswith("linear_probe"))
    assert rows["clip"][lp] == "seeds 0, 1: missing"
    assert "(whole run)" in issues


def test_a_task_with_several_datasets_is_averaged_per_run_then_over_seeds(handmade):
    _, out = handmade
    csv = pd.read_csv(out / "summary.csv", index_col="method")
    per_seed = pd.Series([(60 + 80) / 2, (50 + 90) / 2])        # clip seeds 0 and 1
    assert csv.loc["clip", "compositionality acc mean (%)"] == pytest.approx(per_seed.mean())
    assert csv.loc["clip", "compositionality acc std (%)"] == pytest.approx(per_seed.std())
    assert csv.loc["chance", "compositionality acc mean (%)"] == pytest.approx(25.0)
    md = (out / "summary.md").read_text()
    assert "averaged over 2 datasets" in md and "`sugar/a`, `sugar/b`" in md


def test_paper_table_deltas_ranking_and_missing_rows(handmade):
    _, out = handmade
    text = (out / "paper_flip.md").read_text()
    header, rows = _md_rows(text)
    assert header[:2] == ["row (as published)", "our method"]
    assert header[2:] == ["A: paper", "A: paper Δ vs CLIP", "A: ours Δ vs CLIP", "A: signs agree", "B"]
    # flip − clip per seed: +10, +2 -> mean 6, t interval 6 ± 12.706 * 4 (t with 1 df)
    assert rows["FLIP row"][2:] == ["52.5", "+2.5", "+6.0 [-44.8, +56.8] (n=2)",
                                    "undecided (our interval includes 0)", ""]
    assert rows["CLIP row"][3:] == ["baseline", "baseline", "", "1.25"]
    assert rows["UTA row"][4] == "seed 0: failed; seed 1: incomplete"
    assert rows["other"][2:5] == ["49.0", "-1.0", "—"]
    assert "Ranking on 'A' (by mean): paper flip > clip; ours flip > clip (same order; means over ≥2 seeds)." in text
    assert "No counterpart in our suite for 'B'" in text
    assert "differs from the paper's" in text and "LAION-400M" in text
    broken = (out / "paper_clip.md").read_text()
    assert "paper.yaml unavailable" in broken and "paper.authors must be a string" in broken
    assert "uta/paper.yaml" in (out / "paper_uta.md").read_text()


def test_throughput_and_mask_ratio_per_run(handmade):
    _, out = handmade
    csv = pd.read_csv(out / "summary.csv", index_col="method")
    assert csv.loc["flip", "images_per_s"] == pytest.approx(190.0)
    assert csv.loc["flip", "mask_ratio"] == pytest.approx(0.5) and csv.loc["clip", "mask_ratio"] == 0
    for name in PLOTS:
        assert _png_size(out / name)[0] >= 600


def test_comparability_of_a_paper_column_with_our_scale():
    clip_table = {"setting": "ViT-B/16 (RN50 where noted), CC3M / CC12M / YFCC-15M, 25-40 epochs"}
    assert paper_tables.comparable("cc12m-b16", clip_table, {"name": "CC12M"})
    assert not paper_tables.comparable("cc12m-b16", clip_table, {"name": "CC3M"})
    assert paper_tables.comparable("yfcc15m-b16", clip_table, {"name": "YFCC-15M"})
    flip_table = {"setting": "LAION-400M, 12.8B samples seen"}
    assert not paper_tables.comparable("cc12m-b16", flip_table, {"name": "B/16"})
    assert not paper_tables.comparable("pocket", clip_table, {"name": "CC12M"})
    assert paper_tables.comparable("pocket", flip_table, {"name": "x", "scale": ["pocket"]})   # declared


def test_bad_paper_yaml_is_named_with_the_fix(tmp_path):
    path = tmp_path / "paper.yaml"
    good = yaml.safe_load((REPO / "methods" / "flip" / "paper.yaml").read_text())
    paper_tables.load_paper(REPO / "methods" / "flip" / "paper.yaml")
    good["tables"][0]["rows"][0]["values"] = {"nosuchcolumn": 1.0}
    path.write_text(yaml.safe_dump(good))
    with pytest.raises(UserError, match=r"paper.yaml: tables\[0\].rows\[0\].values names unknown column"):
        paper_tables.load_paper(path)
    good["tables"][0]["rows"][0]["values"] = {"zero-shot IN-1K": "68.6%"}
    path.write_text(yaml.safe_dump(good))
    with pytest.raises(UserError, match="must be a number or null"):
        paper_tables.load_paper(path)


def test_at_the_papers_scale_the_gap_ours_minus_paper_is_shown(tmp_path):
    from benchmark.report import collect
    for seed, acc in ((0, 0.30), (1, 0.34)):
        _fake_run(tmp_path, "clip", seed, {"zeroshot_classification": {"imagenet1k": acc}}, scale="cc12m-b16")
    rebuild_csv(tmp_path, "cc12m-b16")
    res = collect.load(tmp_path, "cc12m-b16")
    ours = {"task": "zeroshot_classification", "metric": "acc"}
    table = {"id": "t", "title": "CLIP from scratch", "source": "S", "status": "C-page",
             "setting": "ViT-B/16, CC3M / CC12M / YFCC-15M",
             "columns": [{"name": "CC3M", "ours": ours}, {"name": "CC12M", "ours": ours}],
             "rows": [{"name": "CLIP ViT-B/16 (SLIP recipe)", "method": "clip",
                       "values": {"CC3M": 17.1, "CC12M": 36.5}}]}
    built = paper_tables.build_table(res, table)
    row = built.frame.set_index("row (as published)").loc["CLIP ViT-B/16 (SLIP recipe)"]
    assert row["CC12M: ours"] == "32.0 [6.6, 57.4] (n=2)"        # 32 ± 12.706 * 2 (t with 1 df)
    assert row["CC12M: ours − paper"] == f"{32.0 - 36.5:+.1f}"
    assert "CC3M: ours − paper" not in built.frame.columns          # CC3M is another scale
    assert "CC3M: ours" not in built.frame.columns                  # and no number of ours under it
    caption = " ".join(built.caption)
    assert "matches the paper's for 'CC12M'" in caption and "not a reproduction gap" in caption   # --match flops
    for run in (tmp_path / "cc12m-b16" / "clip").glob("seed*"):                                      # as the paper
        for name in ("config.json", "metrics.json"):
            obj = json.loads((run / name).read_text())
            (obj.get("identity") or obj["compute"])["match"] = "samples"
            (run / name).write_text(json.dumps(obj))
    built = paper_tables.build_table(collect.load(tmp_path, "cc12m-b16"), table)
    assert "is the reproduction gap (`--match samples`" in " ".join(built.caption)


def test_an_ablation_table_compares_variants_with_the_methods_default_run(tmp_path):
    """``baseline: flip``: each variant row's Δ is against our flip run, paired by seed, beside the paper's Δ."""
    from benchmark.report import collect
    for seed, (a, b) in enumerate(((0.30, 0.36), (0.34, 0.38))):
        _fake_run(tmp_path, "flip", seed, {"zeroshot_classification": {"embedded": a}})
        _fake_run(tmp_path, "flip@batch2x", seed, {"zeroshot_classification": {"embedded": b}})
    rebuild_csv(tmp_path, "smoke")
    res = collect.load(tmp_path, "smoke")
    ours = {"task": "zeroshot_classification", "metric": "acc"}
    table = {"id": "t1b", "title": "batch", "source": "FLIP Table 1(b)", "status": "C-paper", "setting": "L/16",
             "baseline": "flip", "columns": [{"name": "IN", "ours": ours}],
             "rows": [{"name": "16k", "method": "flip", "values": {"IN": 68.5}},
                      {"name": "32k", "method": "flip@batch2x", "values": {"IN": 69.6}}]}
    built = paper_tables.build_table(res, table).frame.set_index("row (as published)")
    assert built.loc["16k", "IN: paper Δ vs flip"] == "baseline"
    assert built.loc["32k", "IN: paper Δ vs flip"] == "+1.1"
    assert built.loc["32k", "IN: ours Δ vs flip"].startswith("+5.0")       # (6, 4) points, paired by seed
