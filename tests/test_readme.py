"""The README's "pipeline by hand" block runs as written.

Every command of the block is run in order, in a fresh folder holding a copy of examples/,
through the real command line. Only sizes shrink: the numbers after the flags in ``TINY``
and the training/pruning budget in the copied example configs. Paths, flags and the order
are the README's own, so a command that names a file no earlier step writes fails here.
"""

import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from usnprune.driver.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = {"--n-train": "100", "--n-test": "10", "--images": "1", "--timeout": "10"}
TINY_CONFIGS = {
    "train.yaml": {"arch": "tiny", "optim": {"epochs": 1, "batch_size": 32, "lr": 0.003}},
    "prune.yaml": {"calibration": {"images": 8, "perturbations": 5},
                   "schedule": {"steps": 1, "reg_epochs": 1, "finetune_epochs": 0, "final_epochs": 0}},
}


def by_hand_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## The pipeline by hand"):]
    block = section[section.index("```bash") + len("```bash"):]
    block = block[:block.index("```")].replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in block.splitlines() if shlex.split(line, comments=True)]


def _shrink(argv: list[str]) -> list[str]:
    return [TINY.get(argv[i - 1], a) if i else a for i, a in enumerate(argv)]


def test_the_block_is_the_whole_pipeline():
    cmds = by_hand_commands()
    assert all(c[0] == "usnprune" for c in cmds)
    assert [c[1] for c in cmds] == ["data", "train", "eval", "prune", "prune", "prune", "export", "verify", "report"]


@pytest.mark.slow
def test_the_by_hand_block_runs_as_written_at_tiny_sizes(tmp_path, monkeypatch, capsys):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    for name, patch in TINY_CONFIGS.items():
        cfg = yaml.safe_load((tmp_path / "examples" / name).read_text())
        (tmp_path / "examples" / name).write_text(yaml.safe_dump({**cfg, **patch}))
    monkeypatch.chdir(tmp_path)
    for argv in by_hand_commands():
        code = main(_shrink(argv[1:]))
        assert code == 0, f"{shlex.join(argv)} exited {code}: {capsys.readouterr().err[-2000:]}"
    md = (tmp_path / "out" / "report" / "report.md").read_text()
    assert "**certified accuracy (%)**" in md and "certified stability (%)" in md
    for net in ("dense", "usn_w", "random"):
        assert f"| {net} |" in md
    assert (tmp_path / "out" / "analysis" / "analysis.png").is_file()
