"""Benchmarks the driver tests share (built once per session)."""

from __future__ import annotations

import pytest

from usnprune.export.benchmark import ExportConfig, export_benchmark


@pytest.fixture(scope="session")
def bench(tiny_checkpoint, small_checkpoint, synth_data, tmp_path_factory):
    """80 instances: 2 networks x 2 images x 10 keypoints x 2 tolerances (0.05 px breaks,
    1 px holds), 10 s each."""
    out = tmp_path_factory.mktemp("vb") / "bench"
    export_benchmark(ExportConfig(checkpoints=[str(tiny_checkpoint), str(small_checkpoint)], categories=["tiny", "small"],
                                  data=str(synth_data), out=str(out), deltas=[0.05, 1.0], images=2, pool=2, timeout=10,
                                  reference="prediction"), log=lambda s: None)
    return out


@pytest.fixture(autouse=True)
def one_thread_per_verifier(monkeypatch):
    """Serial runs in the test process use one thread: on a loaded 2-core machine the
    builtin with 2 threads was 20x slower on some instances (10.5 s, a timeout, against
    0.5 s), which made verdicts depend on the machine's load."""
    monkeypatch.setenv("USNPRUNE_THREADS", "1")


@pytest.fixture(scope="session")
def small_net_bench(bench, tmp_path_factory):
    """The 20 instances of the small network's first image (10 keypoints x 2 tolerances):
    a few seconds of verification, long enough to be interrupted at chosen moments."""
    import shutil

    out = tmp_path_factory.mktemp("snb") / "bench"
    shutil.copytree(bench, out)
    listed = out / "2.0" / "instances.csv"  # the version folder the builtin runs
    rows = [r for r in listed.read_text().splitlines() if r.startswith("onnx/small/")]
    first = rows[0].split(",")[0]
    listed.write_text("\n".join(r for r in rows if r.startswith(first + ",")) + "\n")
    return out
