"""The installed distribution: one top-level package, ``usnprune``, that lives beside the
PyPI packages whose names our stage folders share (``pruner``, ``export``, ``driver``)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NAMESAKES = ["pruner==0.0.6", "export==0.2.1", "driver==0.1.0"]  # unrelated PyPI packages


def _tracked_copy(dest: Path) -> Path:
    """The repository's tracked and untracked-but-not-ignored files (a build writes build/
    and *.egg-info beside the sources: never into the checkout)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = _tracked_copy(tmp_path_factory.mktemp("src"))
    dist = tmp_path_factory.mktemp("dist")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                        str(src)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    (whl,) = dist.glob("usnprune-*.whl")
    return whl


def test_wheel_holds_one_top_level_package(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (top,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert z.read(top).decode().split() == ["usnprune"]
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"usnprune"}
    for module in ("usnprune/pruner/prune.py", "usnprune/export/benchmark.py", "usnprune/driver/cli.py",
                   "usnprune/verifier_specs/profiles/builtin.yaml", "usnprune/export/templates/generate_properties.py",
                   "usnprune/bounds/propagate.py"):
        assert module in names


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*.py")):
        h.update(f.relative_to(folder).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


@pytest.mark.slow
def test_wheel_installs_beside_its_pypi_namesakes(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    got = subprocess.run([str(py), "-m", "pip", "install", "-q", *NAMESAKES], capture_output=True, text=True)
    if got.returncode != 0:
        pytest.skip(f"the PyPI packages {', '.join(NAMESAKES)} could not be installed here: {got.stderr.strip()[-300:]}")
    purelib = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    theirs = {name: _digest(purelib / name) for name in ("pruner", "export", "driver")}
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, capture_output=True)
    # usnprune's dependencies (torch, onnx, ...) from this test's environment, after the
    # venv's own site-packages: the namesakes there still come first
    # (every site-packages folder on this interpreter path: a venv may reach more through .pth files)
    deps = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]
    (purelib / "zz_usnprune_test_deps.pth").write_text("\n".join(deps) + "\n")
    assert {name: _digest(purelib / name) for name in theirs} == theirs, "installing usnprune changed their files"
    help_ = subprocess.run([str(venv / "bin" / "usnprune"), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert help_.returncode == 0 and "verify" in help_.stdout, help_.stderr[-2000:]
    probe = ("import pruner, export, driver, usnprune, usnprune.pruner.prune, usnprune.driver.cli; "
             "print(pruner.__file__); print(usnprune.pruner.prune.__file__); print(usnprune.__version__)")
    out = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    theirs_file, ours_file, version = out.stdout.split()
    assert Path(theirs_file) == purelib / "pruner" / "__init__.py"
    assert Path(ours_file) == purelib / "usnprune" / "pruner" / "prune.py"
    # uninstalling usnprune leaves theirs in place
    subprocess.run([str(py), "-m", "pip", "uninstall", "-y", "-q", "usnprune"], check=True, capture_output=True)
    assert {name: _digest(purelib / name) for name in theirs} == theirs
    assert not (purelib / "usnprune").exists()


def test_import_usnprune_gives_its_version_and_maps_the_stage_folders():
    from importlib.metadata import version

    import usnprune
    import usnprune.pruner.prune

    assert usnprune.__version__ == version("usnprune")
    if Path(usnprune.__file__).parent != REPO / "usnprune":
        pytest.skip(f"usnprune is installed from {usnprune.__file__} here, not from this checkout")
    assert Path(usnprune.pruner.prune.__file__) == REPO / "pruner" / "prune.py"
