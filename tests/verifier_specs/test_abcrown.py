"""The alpha-beta-CROWN backend: profiles -> config, command lines, parsing of real output
(transcripts captured from the real tool, tests/verifier_specs/data/abcrown/README.md),
process management (crash, hang, hard limit by process group), and -- when
USNPRUNE_ABCROWN_HOME and USNPRUNE_ABCROWN_PYTHON point at an installation -- the real
tool through the driver."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from usnprune.errors import ConfigError, UsnpruneError
from usnprune.verifier_specs import abcrown
from usnprune.verifier_specs.abcrown import (
    AbcrownError,
    TranscriptParser,
    build_config,
    classify,
    load_results_pickle,
    parse_counterexample,
    parse_results_file,
    parse_transcript,
)
from usnprune.verifier_specs.base import Instance, load_backend

DATA = Path(__file__).parent / "data" / "abcrown"
REAL = (os.environ.get(abcrown.ENV_HOME), os.environ.get(abcrown.ENV_PYTHON))  # a user's installation, if any


@pytest.fixture(autouse=True)
def _no_user_installation(monkeypatch):
    """Tests see only the installation they configure themselves."""
    monkeypatch.delenv(abcrown.ENV_HOME, raising=False)
    monkeypatch.delenv(abcrown.ENV_PYTHON, raising=False)
    abcrown.AbcrownBackend._probes.clear()


def fake_home(tmp_path: Path) -> Path:
    home = tmp_path / "abcrown-home"
    (home / "complete_verifier").mkdir(parents=True)
    (home / "complete_verifier" / "abcrown.py").write_text("# stands in for the entry point\n")
    return home


def script(tmp_path: Path, name: str, body: str) -> Path:
    """An executable Python script used as the verifier's ``python`` setting."""
    p = tmp_path / name
    p.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    p.chmod(0o755)
    return p


def read(name: str) -> str:
    return (DATA / name).read_text()


# ---- profiles and configuration -------------------------------------------------------


def test_default_profile_is_input_split_bab_on_cpu():
    b = load_backend("abcrown")
    cfg = build_config(b.settings)
    assert cfg["general"]["device"] == "cpu"
    assert cfg["general"]["conv_mode"] == "matrix"
    assert cfg["solver"]["bound_prop_method"] == "forward+crown"
    assert cfg["bab"]["branching"]["input_split"]["enable"] is True
    assert cfg["attack"]["pgd_order"] == "before"
    # what counterexample recovery needs is always on
    assert cfg["general"]["save_adv_example"] is True and cfg["general"]["show_adv_example"] is True
    assert b.settings.batch and b.default_chunk_size == b.settings.chunk_size
    assert b.settings.hard_limit_slack + b.settings.startup_slack < 30  # inside the local executor's grace


def test_gpu_and_crown_profiles():
    gpu = build_config(load_backend("abcrown-gpu").settings)
    assert gpu["general"]["device"] == "cuda"
    assert gpu["bab"]["branching"]["input_split"]["enable"] is True
    crown = build_config(load_backend("abcrown-crown").settings)
    assert crown["general"]["complete_verifier"] == "skip"
    assert crown["attack"]["pgd_order"] == "skip"
    assert "bab" not in crown


def test_options_override_profile_and_nested_config():
    b = load_backend("abcrown", home="/x", python="/y/python", hard_limit_slack=5,
                     **{"abcrown_config.solver.batch_size": 256, "abcrown_config.general.device": "cuda"})
    assert b.settings.home == "/x" and b.settings.python == "/y/python" and b.settings.hard_limit_slack == 5
    cfg = yaml.safe_load(abcrown.config_text(b.settings))
    assert cfg["solver"]["batch_size"] == 256
    assert cfg["solver"]["bound_prop_method"] == "forward+crown"  # untouched siblings stay
    assert cfg["general"]["device"] == "cuda"
    assert load_backend("abcrown").settings.abcrown_config["solver"]["batch_size"] == 1024  # profile not mutated


def test_unknown_and_driver_owned_keys_are_refused():
    with pytest.raises(ConfigError, match="unknown key hard_limit"):
        load_backend("abcrown", hard_limit=3)
    with pytest.raises(ConfigError, match=r"abcrown_config\.bab\.timeout.*set by the driver"):
        load_backend("abcrown", **{"abcrown_config.bab.timeout": 30})
    with pytest.raises(ConfigError, match=r"abcrown_config\.general\.csv_name"):
        load_backend("abcrown", **{"abcrown_config.general.csv_name": "x.csv"})
    with pytest.raises(ConfigError, match="hard_limit_slack.*>= 0"):
        load_backend("abcrown", hard_limit_slack=-1)


def test_command_lines(tmp_path):
    home = fake_home(tmp_path)
    b = load_backend("abcrown", home=str(home), python=sys.executable, extra_args=["--seed", "7"])
    cfg, res, cex = tmp_path / "c.yaml", tmp_path / "r", tmp_path / "x.txt"
    batch = b.command(cfg, res, cex, csv_name="instances-1.csv", root=tmp_path / "root")
    entry = str(home.resolve() / "complete_verifier" / "abcrown.py")
    assert batch == [sys.executable, entry, "--config", str(cfg), "--csv_name", "instances-1.csv",
                     "--root_path", str(tmp_path / "root"), "--results_file", str(res), "--cex_path", str(cex),
                     "--seed", "7"]
    single = b.command(cfg, res, cex, onnx="a.onnx", vnnlib="p.vnnlib", timeout=30)
    assert single[3:10] == [str(cfg), "--onnx_path", "a.onnx", "--vnnlib_path", "p.vnnlib", "--timeout", "30.0"]
    env = b._env()
    assert env["OMP_NUM_THREADS"] == "1" and env["PYTHONUNBUFFERED"] == "1" and "PYTHONPATH" not in env


def test_scratch_copy_decompresses_vnnlib_gz(tmp_path):
    bench = tmp_path / "bench"
    (bench / "onnx").mkdir(parents=True)
    (bench / "vnnlib").mkdir()
    (bench / "onnx" / "net, 1.onnx").write_bytes(b"onnx-bytes")
    with gzip.open(bench / "vnnlib" / "p.vnnlib.gz", "wt") as f:
        f.write("(declare-const X_0 Real)\n")
    b = load_backend("abcrown", home="/x", python="/y")
    inst = Instance(bench, "onnx/net, 1.onnx", "vnnlib/p.vnnlib.gz", 10.0)
    with abcrown._Scratch(b.settings) as ws:
        s = ws.stage(inst, 0)
        assert (ws.root / s.vnnlib).read_text() == "(declare-const X_0 Real)\n" and s.vnnlib.endswith("p.vnnlib")
        assert (ws.root / s.onnx).read_bytes() == b"onnx-bytes" and "," not in s.onnx
        assert ws.stage(inst, 1).onnx == s.onnx  # one copy per ONNX file
        name = ws.write_instances([s], 1)
        assert (ws.root / name).read_text().strip() == f"{s.onnx},{s.vnnlib},10.0"
        path = ws.path
    assert not path.exists()


# ---- parsing real output --------------------------------------------------------------


@pytest.mark.parametrize("name", ["batch_mixed", "batch_unsafe_bab", "batch_timeout", "batch_crown"])
def test_streamed_result_lines_match_the_results_pickle(name):
    outs = parse_transcript(read(f"{name}/stdout.txt"))
    saved = load_results_pickle((DATA / name / "results.pkl").read_bytes())
    rows = (DATA / name / "instances-1.csv").read_text().splitlines()
    assert len(outs) == len(saved) == len(rows)
    for i, (o, (status, seconds)) in enumerate(zip(outs, saved)):
        assert o.idx == i
        assert o.status == status
        assert o.seconds == pytest.approx(seconds, abs=1e-4)


def test_batch_mixed_statuses_and_adversarial_examples():
    outs = parse_transcript(read("batch_mixed/stdout.txt"))
    assert [o.status for o in outs] == ["unsafe-pgd", "unsafe-pgd", "safe", "unsafe-pgd", "safe"]
    for o in outs:
        if o.status.startswith("unsafe"):
            assert o.adv_example == pytest.approx([0.9, -0.1], abs=1e-7)  # the box corner, printed to 8 digits
        else:
            assert o.adv_example is None
    verdicts = [classify(o.status, o.seconds, 20.0, o.timed_out)[0] for o in outs]
    assert verdicts == ["falsified", "falsified", "certified", "falsified", "certified"]


def test_gpu_printed_adversarial_example_cannot_swallow_a_result():
    """On GPUs the example prints as ``tensor([...], device='cuda:0')``; a reader waiting for
    ``])`` would eat the instance's own Result line and shift every later verdict by one."""
    text = read("batch_mixed/stdout.txt")
    gpu = text.replace("-0.10000000])", "-0.10000000], device='cuda:0')")
    assert gpu != text
    cpu_outs, gpu_outs = parse_transcript(text), parse_transcript(gpu)
    assert [(o.idx, o.status) for o in gpu_outs] == [(o.idx, o.status) for o in cpu_outs]
    for o in gpu_outs:
        if o.status.startswith("unsafe"):
            assert o.adv_example == pytest.approx([0.9, -0.1], abs=1e-7)
    # even an example that never closes ends at the next line the parser knows
    broken = "Adv example:\ntensor([ 0.9, -0.1\nResult: unsafe-pgd in 0.0200 seconds\n"
    (out,) = parse_transcript(broken)
    assert out.status == "unsafe-pgd" and out.adv_example == pytest.approx([0.9, -0.1])


def test_unsafe_bab_counterexamples_inside_the_box():
    outs = parse_transcript(read("batch_unsafe_bab/stdout.txt"))
    assert [o.status for o in outs] == ["unsafe-bab", "unsafe-bab", "safe"]
    assert outs[0].adv_example == pytest.approx([0.92832464, -0.09339863])
    assert outs[1].adv_example == pytest.approx([0.90329254, -0.09602044])


def test_timeouts_and_incomplete_answers():
    slow = parse_transcript(read("batch_timeout/stdout.txt"))
    assert all(o.status == "unknown" and o.timed_out for o in slow)
    assert classify(slow[0].status, slow[0].seconds, 0.5, slow[0].timed_out)[0] == "timeout"
    crown = parse_transcript(read("batch_crown/stdout.txt"))
    assert [o.status for o in crown] == ["unknown", "safe-incomplete", "unknown", "safe-incomplete"]
    assert [classify(o.status, o.seconds, 10.0, o.timed_out)[0] for o in crown] == \
        ["unknown", "certified", "unknown", "certified"]


def test_crash_transcript_leaves_the_instance_in_flight():
    parser = TranscriptParser()
    done = [d for d in map(parser.feed, read("batch_crash/stdout.txt").splitlines(True)) if d is not None]
    assert [d.status for d in done] == ["safe-incomplete"]
    assert parser.started and parser.current.idx == 1  # the header of the instance that crashed
    assert "AssertionError: failed parsing line" in read("batch_crash/stdout.txt").splitlines()[-1]
    assert [s for s, _ in load_results_pickle((DATA / "batch_crash" / "results.pkl").read_bytes())] == ["safe-incomplete"]


def test_single_instance_outputs():
    sat = parse_transcript(read("single_sat/stdout.txt"))
    assert [(o.status, o.timed_out) for o in sat] == [("sat", False)]
    word, x = parse_results_file(read("single_sat/results.txt"))
    assert word == "sat" and x == (0.8999999761581421, -0.10000000149011612)
    assert parse_counterexample(read("single_sat/cex.txt")) == x
    unsat = parse_transcript(read("single_unsat/stdout.txt"))
    assert unsat[0].status == "unsat" and unsat[0].seconds == pytest.approx(4.4852614402771)
    assert parse_results_file(read("single_unsat/results.txt")) == ("unsat", None)
    slow = parse_transcript(read("single_timeout/stdout.txt"))
    assert slow[0].status == "timeout" and slow[0].timed_out
    assert parse_results_file(read("single_timeout/results.txt")) == ("timeout", None)


@pytest.mark.parametrize("status,seconds,timed_out,late_ok,expected", [
    ("safe", 2.0, False, False, "certified"),
    ("safe-incomplete", 0.1, False, False, "certified"),
    ("unsat", 4.0, False, False, "certified"),
    ("unsafe-pgd", 0.02, False, False, "falsified"),
    ("unsafe-bab", 0.5, False, False, "falsified"),
    ("sat", 0.04, False, False, "falsified"),
    ("safe-mip", 3.0, False, False, "certified"),
    ("safe-incomplete-refine", 1.0, False, False, "certified"),
    ("unsafe-mip", 3.0, False, False, "falsified"),
    ("unknown-mip", 3.0, False, False, "unknown"),
    ("unknown", 0.3, False, False, "unknown"),
    ("unknown", 3.7, True, False, "timeout"),
    ("unknown", 61.0, False, False, "timeout"),
    ("timeout", 0.2, False, False, "unknown"),  # single-instance mode writes "timeout" for unknown too
    ("timeout", 3.3, True, False, "timeout"),
    ("safe (timed out)", 62.0, False, False, "timeout"),
    ("safe (timed out)", 62.0, False, True, "certified"),
    ("unsafe-pgd (timed out)", 62.0, False, False, "timeout"),
    ("weird", 1.0, False, False, "error"),
])
def test_classify(status, seconds, timed_out, late_ok, expected):
    assert classify(status, seconds, 60.0, timed_out, late_ok)[0] == expected


def test_counterexample_is_taken_only_when_it_is_this_instances(tmp_path):
    b = load_backend("abcrown", home="/x", python="/y")
    inst = Instance(tmp_path, "m.onnx", "p.vnnlib", 10.0)
    staged = abcrown._Staged(inst, "m.onnx", "p.vnnlib", 0)
    with abcrown._Scratch(b.settings) as ws:
        ws.cex.write_text(read("single_sat/cex.txt"))
        got = b._take_counterexample(ws, staged, [0.89999998, -0.10000000])
        assert got == pytest.approx((0.9, -0.1), abs=1e-7)
        assert not ws.cex.exists()  # removed: a later instance never finds it
        ws.cex.write_text(read("single_sat/cex.txt"))
        assert b._take_counterexample(ws, staged, [0.92832464, -0.09339863]) is None  # another instance's point
        assert b._take_counterexample(ws, staged, [0.9, -0.1]) is None  # no file at all


def test_results_pickle_is_read_without_running_code():
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system"):
        load_results_pickle(pickle.dumps({"results": [Evil()]}))


# ---- configuration errors -----------------------------------------------------------


def test_missing_configuration_names_both_settings():
    b = load_backend("abcrown")
    with pytest.raises(AbcrownError) as e:
        b.check_available()
    msg = str(e.value)
    assert isinstance(e.value, UsnpruneError) and "\n" not in msg
    for word in ("'home'", "'python'", "USNPRUNE_ABCROWN_HOME", "USNPRUNE_ABCROWN_PYTHON"):
        assert word in msg
    assert b.version() == "alpha-beta-CROWN"


def test_bad_home_and_bad_python(tmp_path, monkeypatch):
    monkeypatch.setenv(abcrown.ENV_HOME, str(tmp_path))
    monkeypatch.setenv(abcrown.ENV_PYTHON, sys.executable)
    with pytest.raises(AbcrownError, match=r"has no complete_verifier/abcrown\.py.*USNPRUNE_ABCROWN_PYTHON"):
        load_backend("abcrown").check_available()
    home = fake_home(tmp_path)
    with pytest.raises(AbcrownError, match="not an executable file.*USNPRUNE_ABCROWN_HOME"):
        load_backend("abcrown", home=str(home), python=str(tmp_path / "nope")).check_available()


def test_python_without_torch_is_reported(tmp_path):
    home = fake_home(tmp_path)
    bare = tmp_path / "bare-python"  # a real interpreter that sees no site-packages
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    bare.chmod(0o755)
    b = load_backend("abcrown", home=str(home), python=str(bare))
    with pytest.raises(AbcrownError, match=r"cannot import torch: ModuleNotFoundError.*environment problem.*'python'"):
        b.check_available()


def test_torchvision_operator_trap_is_reported_as_an_environment_problem(tmp_path):
    home = fake_home(tmp_path)
    site = tmp_path / "site"
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text("")
    (site / "torchvision").mkdir()
    (site / "torchvision" / "__init__.py").write_text(
        "raise RuntimeError('operator torchvision::nms does not exist')\n")  # what a CUDA wheel on CPU torch says
    bare = tmp_path / "bare-python"
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    bare.chmod(0o755)
    b = load_backend("abcrown", home=str(home), python=str(bare), env={"PYTHONPATH": str(site)})
    with pytest.raises(AbcrownError) as e:
        b.check_available()
    msg = str(e.value)
    assert "cannot import torchvision" in msg and "torchvision::nms" in msg
    assert "environment problem of the alpha-beta-CROWN installation" in msg
    assert "CUDA-linked torchvision next to a CPU torch" in msg  # the real cause, not "another torch"
    assert "\n" not in msg


# ---- process management: crash, hang, hard limit --------------------------------------


def tiny_bench(tmp_path: Path, names: list[str], timeout: float = 1.0) -> list[Instance]:
    bench = tmp_path / "bench"
    (bench / "onnx").mkdir(parents=True, exist_ok=True)
    (bench / "vnnlib").mkdir(exist_ok=True)
    (bench / "onnx" / "m.onnx").write_bytes(b"not read by the test doubles")
    out = []
    for i, n in enumerate(names):
        (bench / "vnnlib" / f"{n}.vnnlib").write_text("; test double input\n")
        out.append(Instance(bench, "onnx/m.onnx", f"vnnlib/{n}.vnnlib", timeout, i))
    return out


CRASH = """
import sys
print("Loading onnx ...", flush=True)
print("Traceback (most recent call last):")
print('  File "abcrown.py", line 394, in <module>')
print("RuntimeError: simulated crash of the verifier", flush=True)
sys.exit(1)
"""

# Instances-file double for process management only (restarts after a hang): it prints the
# per-instance header and result line in the tool's format, and sleeps on "hang" instances.
BATCH_DOUBLE = """
import csv, os, sys, time
args = sys.argv[1:]
root, name = args[args.index("--root_path") + 1], args[args.index("--csv_name") + 1]
with open(os.path.join(os.path.dirname(os.path.abspath(args[args.index("--config") + 1])), "pids"), "a") as f:
    f.write(f"{os.getpid()}\\n")
for i, (onnx, vnnlib, timeout) in enumerate(csv.reader(open(os.path.join(root, name)))):
    idx = i + 1 if "skip" in vnnlib else i  # "skip": a transcript out of step with the file
    print(f" %%%%% idx: {idx}, vnnlib ID: {idx} %%%%%", flush=True)
    if "hang" in vnnlib:
        time.sleep(600)
    if "crash" in vnnlib:
        print("ValueError: simulated", flush=True)
        sys.exit(1)
    print(f"Result: safe in 0.0100 seconds", flush=True)
"""

HANG = """
import os, subprocess, sys, time
child = subprocess.Popen(["sleep", "600"])
open(os.environ["PIDS_FILE"], "w").write(f"{os.getpid()} {child.pid}")
time.sleep(600)
"""


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"  # a zombie is dead, awaiting its reaper
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def wait_gone(pid: int, seconds: float = 5.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if gone(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("batch", [False, True])
def test_crash_becomes_error_with_the_tail_of_the_output(tmp_path, batch):
    b = load_backend("abcrown", home=str(fake_home(tmp_path)), python=str(script(tmp_path, "crash", CRASH)), batch=batch)
    insts = tiny_bench(tmp_path, ["a", "b"])
    got = []
    b.run(insts, lambda i, v: got.append((i.vnnlib, v)))
    assert sorted(n for n, _ in got) == ["vnnlib/a.vnnlib", "vnnlib/b.vnnlib"]
    for _, v in got:
        assert v.status == "error"
        assert "exit code 1" in v.message and "RuntimeError: simulated crash of the verifier" in v.message
        assert "Traceback" in v.message


def test_hang_is_killed_with_its_process_group(tmp_path, monkeypatch):
    pids = tmp_path / "pids"
    monkeypatch.setenv("PIDS_FILE", str(pids))
    b = load_backend("abcrown", home=str(fake_home(tmp_path)), python=str(script(tmp_path, "hang", HANG)),
                     hard_limit_slack=0.5, startup_slack=0.5, env={"PIDS_FILE": str(pids)})
    inst = tiny_bench(tmp_path, ["a"], timeout=0.5)[0]
    t0 = time.monotonic()
    v = b.verify(inst)
    took = time.monotonic() - t0
    assert v.status == "timeout" and "hard limit" in v.message and "process group" in v.message
    assert 1.4 <= took < 5.0  # timeout 0.5 + slack 0.5 + start-up slack 0.5
    main, child = map(int, pids.read_text().split())
    assert wait_gone(main) and wait_gone(child)  # the sleeping grandchild went with the group


def test_batch_hang_is_killed_and_a_new_process_continues(tmp_path):
    b = load_backend("abcrown", home=str(fake_home(tmp_path)), python=str(script(tmp_path, "double", BATCH_DOUBLE)),
                     hard_limit_slack=0.5, startup_slack=1.0, keep_scratch=True, scratch_dir=str(tmp_path / "scratch"))
    insts = tiny_bench(tmp_path, ["a", "hang", "b", "crash", "c"], timeout=0.5)
    got = {}
    b.run(insts, lambda i, v: got.__setitem__(Path(i.vnnlib).stem, v))
    assert [got[n].status for n in ("a", "hang", "b", "crash", "c")] == \
        ["certified", "timeout", "certified", "error", "certified"]
    assert "hard limit" in got["hang"].message and got["hang"].time < 3.0
    assert "ValueError: simulated" in got["crash"].message and "failed on this instance" in got["crash"].message
    ws = next((tmp_path / "scratch").iterdir())
    started = [int(p) for p in (ws / "pids").read_text().split()]
    assert len(started) == 3  # first process killed at the hang, second crashed, third finished
    assert all(wait_gone(p) for p in started)


def test_a_result_for_another_idx_is_never_taken(tmp_path):
    b = load_backend("abcrown", home=str(fake_home(tmp_path)), python=str(script(tmp_path, "double", BATCH_DOUBLE)))
    insts = tiny_bench(tmp_path, ["a", "skip", "b"], timeout=5.0)
    got = {}
    b.run(insts, lambda i, v: got.__setitem__(Path(i.vnnlib).stem, v))
    assert [got[n].status for n in ("a", "skip", "b")] == ["certified", "error", "certified"]
    assert "out of step" in got["skip"].message and "idx 2 while expecting idx 1" in got["skip"].message


def test_an_interrupted_driver_takes_the_tool_down(tmp_path):
    """Ctrl-C (or any exception in the driver's callback) must not leave the tool running in
    its own session."""
    b = load_backend("abcrown", home=str(fake_home(tmp_path)), python=str(script(tmp_path, "double", BATCH_DOUBLE)),
                     keep_scratch=True, scratch_dir=str(tmp_path / "scratch"))
    insts = tiny_bench(tmp_path, ["a", "hang"], timeout=600)

    def interrupt(inst, verdict):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        b.run(insts, interrupt)
    ws = next((tmp_path / "scratch").iterdir())
    (pid,) = [int(p) for p in (ws / "pids").read_text().split()]
    assert wait_gone(pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
def test_verifier_dies_with_the_worker_that_started_it(tmp_path):
    """An executor kills a worker's process group; the tool, in a session of its own,
    must not outlive it."""
    pids = tmp_path / "pids"
    hang = script(tmp_path, "hang", HANG)
    home = fake_home(tmp_path)
    worker = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(Path(__file__).parents[2])!r})
        from pathlib import Path
        from usnprune.verifier_specs.base import Instance, load_backend
        b = load_backend("abcrown", home={str(home)!r}, python={str(hang)!r}, env={{"PIDS_FILE": {str(pids)!r}}})
        bench = Path({str(tmp_path)!r}) / "bench"
        b.verify(Instance(bench, "onnx/m.onnx", "vnnlib/a.vnnlib", 600.0))
    """)])
    tiny_bench(tmp_path, ["a"])
    end = time.monotonic() + 20
    while not (pids.exists() and len(pids.read_text().split()) == 2) and time.monotonic() < end:
        time.sleep(0.05)
    main, child = map(int, pids.read_text().split())
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert wait_gone(main)
    os.kill(child, signal.SIGKILL) if not gone(child) else None  # the grandchild is the tool's business


# ---- the real tool ------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_bench(tmp_path_factory):
    """A small real benchmark: a tiny net trained briefly, one image, every keypoint at
    0.01 px (falsified) and 16 px (certified), reference = the clean prediction."""
    if not all(REAL):
        pytest.skip("alpha-beta-CROWN not configured: set USNPRUNE_ABCROWN_HOME and USNPRUNE_ABCROWN_PYTHON")
    from usnprune.export.benchmark import ExportConfig, export_benchmark
    from usnprune.pruner.data.synthetic import generate
    from usnprune.pruner.train import OptimConfig, TrainConfig, train

    tmp = tmp_path_factory.mktemp("abcrown-real")
    generate(tmp / "data", 160, 12, seed=0, size=32)
    train(TrainConfig(data=str(tmp / "data"), out=str(tmp / "net"), arch="tiny",
                      optim=OptimConfig(epochs=3, batch_size=32)), log=lambda *_: None)
    bench = tmp / "bench"
    export_benchmark(ExportConfig(checkpoints=[str(tmp / "net" / "model.pt")], data=str(tmp / "data"),
                                  out=str(bench), categories=["tiny"], deltas=[0.01, 16.0], images=1, pool=1,
                                  timeout=60, reference="prediction"), log=lambda *_: None)
    return bench


@pytest.fixture
def real_env(monkeypatch):
    monkeypatch.setenv(abcrown.ENV_HOME, REAL[0])
    monkeypatch.setenv(abcrown.ENV_PYTHON, REAL[1])


@pytest.mark.slow
def test_real_abcrown_through_the_driver(real_bench, real_env, tmp_path):
    """Through ``driver.verify.verify``: every falsified verdict replays through onnxruntime
    (else the driver writes an error row), and no certified one is refuted by sampling (the
    driver's SOUNDNESS ALARM, and a denser sampling here)."""
    import numpy as np
    import pandas as pd

    from usnprune.driver.verify import verify
    from usnprune.export.vnnlib import parse_file
    from usnprune.verifier_specs.replay import evaluate, get_session

    bench = real_bench
    summary = verify(bench, tmp_path / "run", backend="abcrown", executor="serial", log=lambda *_: None)
    rows = pd.read_csv(tmp_path / "run" / "instances.csv")
    assert summary["alarms"] == 0 and summary["missing"] == 0
    assert not (rows.verdict == "error").any(), rows[rows.verdict == "error"].message.tolist()
    assert (rows.verdict == "falsified").any()  # 0.01 px: brightness moves a keypoint further than that
    falsified = rows[rows.verdict == "falsified"]
    assert falsified.cex_c.notna().all() and falsified.cex_b.notna().all()  # replayed by the driver
    rng = np.random.default_rng(1)
    for _, r in rows[rows.verdict == "certified"].iterrows():
        prop = parse_file(bench / "1.0" / r.vnnlib)  # alpha-beta-CROWN reads VNN-LIB 1.0
        lo, hi = prop.disjuncts[0].lower, prop.disjuncts[0].upper
        grid = np.stack(np.meshgrid(np.linspace(lo[0], hi[0], 41), np.linspace(lo[1], hi[1], 41)), -1).reshape(-1, 2)
        pts = np.concatenate([grid, rng.uniform(lo, hi, size=(2000, 2))])
        ys = evaluate(get_session(str(bench / "1.0" / r.onnx)), pts)
        for d in prop.disjuncts:
            assert not (d.contains(pts) & d.holds(ys)).any(), f"{r.vnnlib}: certified, but a sample violates it"


@pytest.mark.slow
def test_real_counterexample_recovery_falls_back_to_a_single_run(real_bench, real_env, monkeypatch):
    """When the shared counterexample file cannot be attributed, the instance is verified
    again alone and its own results file supplies the point."""
    from usnprune.driver.runfolder import load_instances
    from usnprune.export.vnnlib import parse_file
    from usnprune.verifier_specs.replay import replay

    monkeypatch.setattr(abcrown.AbcrownBackend, "_take_counterexample", lambda *a: None)
    insts = [i for i in load_instances(real_bench, versions=abcrown.AbcrownBackend.vnnlib_versions)
             if "_d0.01" in i.vnnlib][:2]
    got = []
    load_backend("abcrown").run(insts, lambda i, v: got.append((i, v)))
    assert len(got) == 2
    for inst, v in got:
        assert v.status == "falsified" and "verified again alone" in v.message
        assert replay(str(inst.onnx_path), parse_file(inst.vnnlib_path), v.counterexample).ok
