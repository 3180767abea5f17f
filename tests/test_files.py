"""usnprune/files.py: paths stay inside their folder; OutputFolder replaces only what
usnprune wrote, never an input, and leaves nothing half-written."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from usnprune.files import MANIFEST, STAGING_PREFIX, OutputFolder, PathError, inside, safe_relative


def test_safe_relative_and_inside(tmp_path):
    assert safe_relative("./a//b/./c") == "a/b/c"
    for bad in ("", "/etc/passwd", "../x", "a/../../x", "C:/x"):
        with pytest.raises(PathError):
            safe_relative(bad)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path)  # a symlinked folder that leads out
    assert inside(tmp_path / "out", "a/b") == (tmp_path / "out" / "a" / "b").resolve()
    with pytest.raises(PathError, match="outside"):
        inside(tmp_path / "out", "link/x")


def test_output_folder_claims_before_work_and_lists_what_it_wrote(tmp_path):
    out = tmp_path / "out"
    with OutputFolder(out, "train").staging(["model.pt", "a/b.csv"]) as stage:
        stage.path("model.pt").write_text("1")
        stage.path("a/b.csv").write_text("x")
    assert json.loads((out / MANIFEST).read_text())["files"] == {"a/b.csv": "train", "model.pt": "train"}
    with pytest.raises(PathError, match="model.pt exists; pass --force"):
        OutputFolder(out, "train").claim(["model.pt"])
    (out / "notes.txt").write_text("mine")
    with pytest.raises(PathError, match="usnprune did not write it"):
        OutputFolder(out, "train", force=True).claim(["notes.txt"])
    with OutputFolder(out, "train", force=True).staging(["model.pt"], remove_stale=True) as stage:
        stage.path("model.pt").write_text("2")
    assert (out / "model.pt").read_text() == "2" and not (out / "a" / "b.csv").exists()  # stale: listed, not rewritten
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(PathError, match="would overwrite the input"):
        OutputFolder(out, "prune", force=True, inputs=[out / "model.pt"]).claim(["model.pt"])


def test_a_failure_while_writing_leaves_the_folder_as_it_was(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RuntimeError):
        with OutputFolder(out, "report").staging(["summary.csv"]) as stage:
            stage.path("summary.csv").write_text("half")
            raise RuntimeError("disk full, say")
    assert list(out.iterdir()) == []


def test_a_killed_writers_staging_folder_is_removed_by_the_next_one(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname().replace("-", "_")
    left = out / f"{STAGING_PREFIX}{host}-{int(dead.stdout)}-abc"
    alive = out / f"{STAGING_PREFIX}{host}-{os.getpid()}-def"
    for d in (left, alive):
        d.mkdir()
        (d / "model.pt").write_text("partial")
    with OutputFolder(out, "train").staging(["x.csv"]) as stage:
        stage.path("x.csv").write_text("x")
    assert not left.exists() and alive.exists()
