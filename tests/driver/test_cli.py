"""The command line a newcomer meets: bare usage, --version, help and a default on every
option, one default per setting, errors that name what was typed, the analysis folder, and
progress that suits a log file."""

import argparse
import io
import os
import subprocess
import sys

import pytest
import yaml

from usnprune import __version__
from usnprune.config import default_of
from usnprune.driver.cli import COMMANDS, build_parser, main
from usnprune.progress import LineProgress, bar


def _subparsers(parser: argparse.ArgumentParser, path=()):
    """(command path, parser) for every parser under ``parser``, itself included."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subparsers(sub, path + (name,))


def test_every_option_of_every_subcommand_has_help_text():
    parsers = list(_subparsers(build_parser()))
    assert {path for path, _ in parsers if len(path) == 1} == {(c,) for c in COMMANDS}
    missing = [f"usnprune {' '.join(path)} {a.option_strings or a.dest}"
               for path, p in parsers for a in p._actions
               if not isinstance(a, argparse._SubParsersAction) and not (a.help and a.help.strip())]
    assert not missing, missing
    assert len([a for _, p in parsers for a in p._actions]) > 60  # every command was built


def test_help_shows_each_default_and_the_defaults_are_the_config_types():
    from usnprune.driver.verify import VerifyConfig
    from usnprune.export.benchmark import ExportConfig
    from usnprune.pruner.evaluate import EvalConfig

    helps = {path: p.format_help() for path, p in _subparsers(build_parser())}
    export = " ".join(helps[("export",)].split())
    assert "(default: both)" in export and "(default: 0.5)" in export and "(default: 0)" in export
    assert "(default: 2 x --images)" in export and "default: None" not in export
    assert "(default: 0.5 1 2)" in " ".join(helps[("eval",)].split())
    assert "(default: builtin)" in " ".join(helps[("verify",)].split())
    args = build_parser().parse_args(["export", "--checkpoint", "c", "--data", "d", "--out", "o"])
    assert (args.delta, args.reference, args.images) == (
        default_of(ExportConfig, "deltas"), default_of(ExportConfig, "reference"), default_of(ExportConfig, "images"))
    args = build_parser().parse_args(["eval", "--checkpoint", "c", "--data", "d"])
    assert (args.delta, args.grid) == (default_of(EvalConfig, "deltas"), default_of(EvalConfig, "grid"))
    args = build_parser().parse_args(["verify", "b", "--out", "o"])
    assert (args.workers, args.backend) == (default_of(VerifyConfig, "workers"), default_of(VerifyConfig, "backend"))


def test_bare_usnprune_lists_the_commands_and_version_prints_it(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(f"    {c} " in out for c in COMMANDS) and "usnprune COMMAND --help" in out
    assert main(["data"]) == 0 and "synth" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"usnprune {__version__}"


@pytest.mark.parametrize("argv, match", [
    (["prune", "--config", "p.yaml", "--sparsity", "1.5"], "argument --sparsity: must be in [0, 1)"),
    (["prune", "--config", "p.yaml", "--method", "magic"], "argument --method: invalid choice: 'magic'"),
])
def test_an_error_names_the_option_as_typed(argv, match, capsys):
    with pytest.raises(SystemExit) as e:  # argparse's own errors end the process
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("argv, match", [
    (["export", "--checkpoint", "c", "--data", "d", "--out", "o", "--eps-contrast", "1.5"], "--eps-contrast 1.5: must be < 1"),
    (["eval", "--checkpoint", "c", "--data", "d", "--eps-brightness", "inf"], "--eps-brightness inf: expected a finite"),
])
def test_a_bad_box_names_the_option_and_its_value(argv, match, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1


def test_a_check_across_options_names_the_option(capsys):
    assert main(["export", "--checkpoint", "c", "--data", "d", "--out", "o", "--images", "5", "--pool", "3"]) == 2
    assert capsys.readouterr().err.strip() == "usnprune: error: --pool: must be >= images"


def test_an_error_from_a_file_names_the_file_and_key(tmp_path, capsys):
    cfg = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "..", "examples", "prune.yaml")))
    cfg["sparsity"] = 1.5
    (tmp_path / "prune.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["prune", "--config", str(tmp_path / "prune.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{tmp_path / 'prune.yaml'}.sparsity: must be in [0, 1)" in err and len(err.splitlines()) == 1


def test_analysis_goes_to_its_own_folder(small_checkpoint, synth_data, tmp_path, capsys):
    cfg = {"checkpoint": str(small_checkpoint), "data": str(synth_data), "out": str(tmp_path / "pruned"),
           "calibration": {"images": 8, "perturbations": 5}}
    (tmp_path / "prune.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["prune", "--config", str(tmp_path / "prune.yaml"), "--analyze-only"]) == 0
    assert (tmp_path / "pruned-analysis" / "analysis.csv").is_file()
    assert (tmp_path / "pruned-analysis" / "analysis.png").is_file() and not (tmp_path / "pruned").exists()
    assert main(["prune", "--config", str(tmp_path / "prune.yaml"), "--analyze-only", "--out", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "analysis.csv").is_file()


def test_progress_in_a_log_file_is_lines_without_carriage_returns(monkeypatch):
    monkeypatch.delenv("USNPRUNE_NO_PROGRESS", raising=False)
    log = io.StringIO()
    b = bar(5, "step", unit="items", file=log)
    assert isinstance(b, LineProgress) and log.getvalue().startswith("step: 0/5 items (0%)")  # at once, not at the end
    for _ in range(5):
        b.update()
    b.set_postfix({"certified": 5})
    b.close()
    text = log.getvalue()
    assert "\r" not in text and text.splitlines()[-1].startswith("step: 5/5 items (100%)") and "certified=5" in text


def test_a_command_logged_to_a_file_has_no_redraws(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "USNPRUNE_NO_PROGRESS"}
    with open(tmp_path / "log.txt", "w") as log:
        r = subprocess.run([sys.executable, "-m", "usnprune.driver.cli", "data", "synth", "--out", str(tmp_path / "d"),
                            "--n-train", "220", "--n-test", "5"], stdout=log, stderr=subprocess.STDOUT, env=env)
    text = (tmp_path / "log.txt").read_text()
    assert r.returncode == 0, text
    assert "\r" not in text and "synthetic images: 0/225 img" in text and "synthetic images: 225/225 img" in text
