"""Command line: discovery of method folders, bad input -> exit 2 with a message naming the fix.

``benchmark.cli.main`` answers in this process (``python -m benchmark`` itself runs in tests/test_readme.py)."""
import multiprocessing
import signal

from conftest import GOOD_METHOD

from benchmark.cli import main


def test_list_shows_every_method_with_paper_and_summary(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "clip" in out and "flip" in out and "Li, Fan, Hu" in out


def test_unknown_method_exits_2_and_lists_available(tmp_path, capsys):
    assert main(["run", "--methods", "nosuchmethod", "--scale", "smoke", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "nosuchmethod" in err and "clip" in err and "flip" in err
    assert not any(tmp_path.iterdir()), "nothing may be written on bad input"
    # the local worker `run` started before checking its input was stopped (SIGTERM), not left importing
    for child in multiprocessing.active_children():
        child.join(5)
        assert child.exitcode == -signal.SIGTERM


def _methods_dir(tmp_path):
    root = tmp_path / "methods"
    good = root / "good"
    good.mkdir(parents=True)
    (good / "method.py").write_text(GOOD_METHOD)
    (good / "config.yaml").write_text("defaults:\n  mask_ratio: 0.5\n")
    broken = root / "broken"
    broken.mkdir()
    (broken / "method.py").write_text("import nosuchmodule\n")
    empty = root / "empty"
    empty.mkdir()
    (empty / "method.py").write_text("x = 1\n")
    badyaml = root / "badyaml"
    badyaml.mkdir()
    (badyaml / "method.py").write_text((good / "method.py").read_text())
    (badyaml / "config.yaml").write_text("defaults: [unclosed\n")
    return root


def test_broken_folders_are_reported_by_name_and_hide_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MASKBENCH_METHODS", str(_methods_dir(tmp_path)))
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "Good et al." in out
    assert "broken" in out and "nosuchmodule" in out
    assert "empty" in out and "exactly one Method subclass" in out
    assert "badyaml" in out and "not valid YAML" in out


def test_bad_values_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MASKBENCH_METHODS", str(_methods_dir(tmp_path)))
    res = tmp_path / "r"
    cases = [
        (["--methods", "broken"], "nosuchmodule"),
        (["--methods", "good", "--seeds", "-1"], "negative"),
        (["--methods", "good", "--set", "good.mask_ratio=1.5"], "outside [0, 1)"),
        (["--methods", "good", "--set", "good.nokey=1"], "unknown key"),
        (["--methods", "good", "--set", "good.mask_ratio=abc"], "must be float"),
        (["--methods", "good", "--scale", "huge"], "unknown scale"),
        (["--methods", "all"], "broken method folder"),
        (["--methods", "good", "--scale", "cc12m-b16"], "--cluster slurm"),
    ]
    for extra, needle in cases:
        code = main(["run", "--scale", "smoke", *extra, "--results", str(res)])
        err = capsys.readouterr().err
        assert code == 2, (extra, err)
        assert needle in err, (extra, err)
    assert not res.exists(), "nothing may be written on bad input"


def test_pocket_runs_three_seeds_by_default_other_scales_one():
    from benchmark.cli import _specs, build_parser

    def seeds(*argv):
        args = build_parser().parse_args(["run", "--methods", "clip", *argv])
        return [s.seed for s in _specs(args, args.scale)[1]]
    assert seeds() == [0, 1, 2]                       # pocket is the default scale
    assert seeds("--scale", "smoke") == [0]
    assert seeds("--seeds", "4") == [4]
    assert seeds("--scale", "smoke", "--seeds", "1", "2") == [1, 2]
    assert seeds("--scale", "smoke", "--seeds", "1,2") == [1, 2]


def test_lists_take_commas_spaces_or_both():
    from benchmark.cli import _seeds, build_parser, split_list
    parse = build_parser().parse_args
    for argv in (["--methods", "clip,flip"], ["--methods", "clip", "flip"], ["--methods", "clip,", "flip"]):
        assert split_list(parse(["run", *argv]).methods) == ["clip", "flip"], argv
    assert split_list(parse(["run", "--methods", "flip@mask75,clip"]).methods) == ["flip@mask75", "clip"]
    for argv in (["--seeds", "0", "1"], ["--seeds", "0,1"], ["--seeds", "0,", "1", "1"]):
        assert _seeds(parse(["run", *argv]).seeds) == [0, 1], argv
    assert parse(["run"]).seeds is None and split_list(parse(["run"]).methods) == ["all"]


def test_help_has_a_line_with_the_default_for_every_flag():
    import argparse

    from benchmark.cli import build_parser
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"list", "run", "eval", "report", "status", "check", "perf"} <= set(subs.choices)
    for name, sub in subs.choices.items():
        text = sub.format_help()
        assert "§" not in text and "DESIGN" not in text, name
        for action in sub._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.option_strings[0]} has no help text"
            if action.default not in (None, False, []):
                shown = " ".join(action.default) if isinstance(action.default, list) else str(action.default)
                line = " ".join(action.help.split())
                assert f"(default: {shown})" in " ".join(text.split()) or "default" in line.lower(), \
                    (name, action.option_strings[0])
    top = parser.format_help()
    assert "§" not in top and "DESIGN" not in top
