"""Every bad input gets one line: a fuzz suite of bad inputs across every subcommand.

Each case runs ``usnprune`` (in process, ``main(argv)``) in a small world of real files (a
synthetic dataset, a trained checkpoint, a benchmark, a run folder) and asserts: exit status
2, exactly one line on stderr, ``usnprune: error: ...`` naming what the user typed, no
traceback, and no file outside the case's ``--out`` created, changed or deleted (the whole
world is snapshot by content before and after). A few cases also run as a real process.
The cases of issue 12's lists (21 tracebacks, 10 silent successes, 7 files it did not
write) are marked with their list in a comment.

Full-disk and read-only cases run on a small tmpfs mounted for the test (as root, where
``mount`` works; skipped with the reason otherwise): one line, exit 2, and nothing
half-written that looks complete; a verify stopped by a full disk finishes with --resume
once there is space again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from usnprune.driver.cli import main

ROOT = Path(__file__).resolve().parents[1]


# ---- the world ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Real inputs, made once: data (10 keypoints), a tiny checkpoint, a benchmark of 20
    instances (both references of 10 keypoints), a finished run, and variants of each broken in one way."""
    import onnx
    from onnx import numpy_helper

    from usnprune.pruner.models import KeypointNet, arch_from, save_checkpoint

    w = tmp_path_factory.mktemp("world")
    os.environ["USNPRUNE_NO_PROGRESS"] = "1"
    assert main(["data", "synth", "--out", str(w / "data"), "--n-train", "24", "--n-test", "6", "--seed", "0"]) == 0
    (w / "train.yaml").write_text(f"data: {w / 'data'}\nout: {w / 'dense'}\narch: tiny\noptim: {{epochs: 1}}\n")
    assert main(["train", "--config", str(w / "train.yaml")]) == 0
    ckpt = w / "dense" / "model.pt"
    assert main(["export", "--checkpoint", str(ckpt), "--category", "tiny", "--data", str(w / "data"), "--out",
                 str(w / "bench"), "--delta", "1", "--images", "1", "--pool", "1", "--timeout", "10",
                 "--vnnlib-version", "1"]) == 0  # 1.0/ only: the variants below edit VNN-LIB 1.0 text
    assert main(["verify", str(w / "bench"), "--out", str(w / "run"), "--executor", "serial"]) == 0

    blob = torch.load(ckpt, weights_only=True)
    blob["state_dict"]["head.weight"][0, 0] = float("nan")
    torch.save(blob, w / "nan.pt")
    save_checkpoint(w / "two_kp.pt", KeypointNet(arch_from("tiny", num_keypoints=2)), {"method": "dense", "seed": 0})
    (w / "empty.pt").write_bytes(b"")
    (w / "text.pt").write_text("not a checkpoint\n")
    (w / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (w / "afile").write_text("a file, not a folder\n")
    (w / "emptydir").mkdir()

    def bench_copy(name: str) -> Path:
        dst = w / name
        shutil.copytree(w / "bench", dst)
        return dst

    rows = (w / "bench" / "1.0" / "instances.csv").read_text().splitlines()
    onnx0, vnn0, t0 = rows[0].split(",")
    b = bench_copy("bench_binary_csv") / "1.0"
    (b / "instances.csv").write_bytes(b"\xff\xfe\x00onnx\x00\x81\n")
    b = bench_copy("bench_empty_box") / "1.0"
    (b / vnn0).write_text((b / vnn0).read_text().replace("(assert (>= X_0 0.9))", "(assert (>= X_0 1.5))"))
    b = bench_copy("bench_inf_threshold") / "1.0"
    (b / vnn0).write_text(_inf_threshold((b / vnn0).read_text()))
    b = bench_copy("bench_nan_onnx") / "1.0"
    m = onnx.load(b / onnx0)
    for t in m.graph.initializer:
        if numpy_helper.to_array(t).dtype.kind == "f" and numpy_helper.to_array(t).size > 1:
            arr = numpy_helper.to_array(t).copy()
            arr.flat[0] = np.inf
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
            break
    onnx.save(m, b / onnx0)
    b = bench_copy("bench_dup") / "1.0"
    (b / "instances.csv").write_text("\n".join(rows + [f"./{onnx0},{vnn0},{t0}"]) + "\n")
    b = bench_copy("bench_escape") / "1.0"
    (b / "instances.csv").write_text(f"../bench/{onnx0},{vnn0},{t0}\n")
    (w / "base.yaml").write_text("backend: base\n")

    # a run whose store was hand-edited: a time that is not a number
    shutil.copytree(w / "run", w / "run_edited")
    store = next((w / "run_edited" / "results").glob("*.jsonl"))
    lines = store.read_text().splitlines()
    row = json.loads(lines[0])
    row["time"], row["finished_at"] = "slow", row["finished_at"] + 1
    store.write_text("\n".join(lines + [json.dumps(row)]) + "\n")

    # output folders holding a user's files where usnprune would write
    for name, files in {"user_train": ["model.pt"], "user_prune": ["report.json"], "user_report": ["summary.csv"],
                        "user_bench": ["README.md", "instances.csv"]}.items():
        (w / name).mkdir()
        for f in files:
            (w / name / f).write_text("the user's own file\n")
    shutil.copytree(w / "bench", w / "victim_bench")
    meta = json.loads((w / "victim_bench" / "benchmark.json").read_text())
    meta["files"].append("../victim.txt")
    (w / "victim_bench" / "benchmark.json").write_text(json.dumps(meta))
    (w / "victim.txt").write_text("must survive\n")
    (w / "prune_in_dense.yaml").write_text(f"checkpoint: {ckpt}\ndata: {w / 'data'}\nout: {w / 'dense'}\nmethod: random\n")
    return w


def _inf_threshold(text: str) -> str:
    """The first output threshold of a keypoint property replaced by 1e999 (= inf)."""
    import re

    new, n = re.subn(r"\(>= (Y_\d+) [-\d.e]+\)", r"(>= \1 1e999)", text, count=1)
    assert n == 1
    return new


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ---- the cases ------------------------------------------------------------------------
# (id, argv with {w} for the world folder and {out} for the case's own output path, what
# the one line must contain). YAML files a case needs are written from CONFIGS first.

CONFIGS = {
    "train_lr_inf": "data: {w}/data\nout: {out}\narch: tiny\noptim: {{epochs: 1, lr: .inf}}\n",
    "train_warmup_inf": "data: {w}/data\nout: {out}\narch: tiny\noptim: {{epochs: 1, warmup_epochs: .inf}}\n",
    "train_lr_nan": "data: {w}/data\nout: {out}\narch: tiny\noptim: {{lr: .nan}}\n",
    "train_cuda": "data: {w}/data\nout: {out}\narch: tiny\ndevice: cuda\noptim: {{epochs: 1}}\n",
    "train_unknown": "data: {w}/data\nout: {out}\narch: tiny\nlearning_rate: 1\n",
    "train_epochs": "data: {w}/data\nout: {out}\narch: tiny\noptim: {{epochs: -1}}\n",
    "train_arch": "data: {w}/data\nout: {out}\narch: huge\n",
    "train_nodata": "data: {w}/nosuch\nout: {out}\narch: tiny\n",
    "train_user_file": "data: {w}/data\nout: {w}/user_train\narch: tiny\noptim: {{epochs: 1}}\n",
    "train_out_file": "data: {w}/data\nout: {w}/afile\narch: tiny\noptim: {{epochs: 1}}\n",
    "train_batch": "data: {w}/data\nout: {out}\narch: tiny\noptim: {{batch_size: 0}}\n",
    "train_size": "data: {w}/data\nout: {out}\narch: tiny\ninput_size: 4\n",
    "train_notmap": "- a\n- list\n",
    "train_badyaml": "data: [unclosed\n",
    "prune_sparsity": "checkpoint: {w}/dense/model.pt\ndata: {w}/data\nout: {out}\nsparsity: 1.0\n",
    "prune_method": "checkpoint: {w}/dense/model.pt\ndata: {w}/data\nout: {out}\nmethod: bogus\n",
    "prune_lr_inf": "checkpoint: {w}/dense/model.pt\ndata: {w}/data\nout: {out}\noptim: {{lr: .inf}}\n",
    "prune_nan": "checkpoint: {w}/nan.pt\ndata: {w}/data\nout: {out}\nmethod: random\n",
    "prune_two_kp": "checkpoint: {w}/two_kp.pt\ndata: {w}/data\nout: {out}\nmethod: random\n",
    "prune_user_file": "checkpoint: {w}/dense/model.pt\ndata: {w}/data\nout: {w}/user_prune\nmethod: random\n",
    "prune_eps": "checkpoint: {w}/dense/model.pt\ndata: {w}/data\nout: {out}\nperturbation: {{eps_c: 2}}\n",
    "run_unknown_backend": "out: {out}\ndata: {{path: {w}/data}}\nverify: {{backends: [builtin, nosuchverifier]}}\n",
    "run_no_out": "data: {{path: {w}/data}}\n",
    "run_unknown_key": "out: {out}\ndata: {{path: {w}/data}}\ntrian: {{}}\n",
    "run_seeds": "out: {out}\ndata: {{path: {w}/data}}\nseeds: [1, 1]\n",
    "run_lr_inf": "out: {out}\ndata: {{path: {w}/data}}\ntrain: {{optim: {{lr: .inf}}}}\n",
}

EXPORT = ["export", "--checkpoint", "{w}/dense/model.pt", "--data", "{w}/data"]
EVAL = ["eval", "--checkpoint", "{w}/dense/model.pt", "--data", "{w}/data"]

CASES = [
    # data synth
    ("synth_n0", ["data", "synth", "--out", "{out}", "--n-train", "0"], "--n-train must be >= 1"),
    ("synth_nan", ["data", "synth", "--out", "{out}", "--n-train", "abc"], "--n-train must be an integer"),
    ("synth_size", ["data", "synth", "--out", "{out}", "--size", "8"], "--size must be >= 16"),
    ("synth_seed", ["data", "synth", "--out", "{out}", "--seed", "-1"], "seed: must be >= 0"),
    ("synth_file", ["data", "synth", "--out", "{w}/afile"], "is not a folder"),
    ("synth_over_dataset", ["data", "synth", "--out", "{w}/data", "--n-train", "10"], "pass --force"),  # list 3
    ("synth_foreign", ["data", "synth", "--out", "{w}/user_train", "--n-train", "2"], "holds other files"),
    # train
    ("train_missing_config", ["train", "--config", "{w}/nosuch.yaml"], "no such config file"),
    ("train_binary_config", ["train", "--config", "{w}/binary.yaml"], "binary.yaml"),
    ("train_lr_inf", ["train", "--config", "{cfg}"], "optim.lr: expected a finite number"),  # list 5
    ("train_warmup_inf", ["train", "--config", "{cfg}"], "optim.warmup_epochs: expected a finite number"),  # list 4
    ("train_lr_nan", ["train", "--config", "{cfg}"], "optim.lr: expected a finite number"),
    ("train_cuda", ["train", "--config", "{cfg}"], "device: 'cuda', but torch sees no CUDA device"),  # list 4
    ("train_unknown", ["train", "--config", "{cfg}"], "unknown key learning_rate"),
    ("train_epochs", ["train", "--config", "{cfg}"], "optim.epochs: must be >= 0"),
    ("train_arch", ["train", "--config", "{cfg}"], "unknown architecture 'huge'"),
    ("train_nodata", ["train", "--config", "{cfg}"], "nosuch"),
    ("train_user_file", ["train", "--config", "{cfg}"], "model.pt exists; pass --force"),  # list 3
    ("train_user_file_force", ["train", "--config", "{cfg:train_user_file}", "--force"],
     "usnprune did not write it"),  # list 3
    ("train_out_file", ["train", "--config", "{cfg}"], "exists and is not a folder"),
    ("train_batch", ["train", "--config", "{cfg}"], "optim.batch_size: must be >= 1"),
    ("train_size", ["train", "--config", "{cfg}"], "input_size: must be >= 8"),
    ("train_notmap", ["train", "--config", "{cfg}"], "expected a mapping"),
    ("train_badyaml", ["train", "--config", "{cfg}"], "not valid YAML"),
    # eval
    ("eval_missing_ckpt", ["eval", "--checkpoint", "{w}/nosuch.pt", "--data", "{w}/data"], "no such checkpoint"),
    ("eval_empty_ckpt", ["eval", "--checkpoint", "{w}/empty.pt", "--data", "{w}/data"],
     "not a readable checkpoint"),  # list 4
    ("eval_text_ckpt", ["eval", "--checkpoint", "{w}/text.pt", "--data", "{w}/data"], "not a readable checkpoint"),
    ("eval_nan_ckpt", ["eval", "--checkpoint", "{w}/nan.pt", "--data", "{w}/data"], "NaN or infinite"),  # list 5
    ("eval_two_kp", ["eval", "--checkpoint", "{w}/two_kp.pt", "--data", "{w}/data"],
     "predicts 2 keypoints, the data"),  # list 4
    ("eval_out_folder", EVAL + ["--out", "{w}/emptydir"], "is a folder"),  # list 4
    ("eval_out_exists", EVAL + ["--out", "{w}/afile"], "exists; pass --force"),
    ("eval_delta0", EVAL + ["--delta", "0"], "--delta must be > 0"),
    ("eval_delta_inf", EVAL + ["--delta", "inf"], "--delta must be > 0 and finite"),
    ("eval_eps_c", EVAL + ["--eps-contrast", "1.5"], "--eps-contrast 1.5: must be < 1"),
    ("eval_eps_huge", EVAL + ["--eps-brightness", "1e308"], "--eps-brightness 1e+308: must be <= 2"),  # list 4
    ("eval_eps_nan", EVAL + ["--eps-brightness", "nan"], "--eps-brightness nan: expected a finite number"),
    ("eval_grid", EVAL + ["--grid", "1"], "--grid must be >= 2"),
    ("eval_not_data", ["eval", "--checkpoint", "{w}/dense/model.pt", "--data", "{w}/emptydir"], "emptydir"),
    # prune
    ("prune_sparsity", ["prune", "--config", "{cfg}"], "sparsity: must be in [0, 1)"),
    ("prune_method", ["prune", "--config", "{cfg}"], "method: 'bogus' is not one of"),
    ("prune_lr_inf", ["prune", "--config", "{cfg}"], "optim.lr: expected a finite number"),
    ("prune_nan", ["prune", "--config", "{cfg}"], "NaN or infinite"),  # list 5
    ("prune_two_kp", ["prune", "--config", "{cfg}"], "predicts 2 keypoints"),  # list 4
    ("prune_analyze_two_kp", ["prune", "--config", "{cfg:prune_two_kp}", "--analyze-only"],
     "predicts 2 keypoints"),  # list 4
    ("prune_over_input", ["prune", "--config", "{w}/prune_in_dense.yaml", "--force"],
     "would overwrite the input"),  # list 3
    ("prune_user_file", ["prune", "--config", "{cfg}"], "report.json exists; pass --force"),  # list 3
    ("prune_eps", ["prune", "--config", "{cfg}"], "perturbation.eps_c: must be < 1"),
    ("prune_bad_override", ["prune", "--config", "{cfg:prune_method}", "--sparsity", "x"], "--sparsity"),
    # export
    ("export_category_escape", EXPORT + ["--out", "{out}", "--category", "../../evil"],
     "--category: '../../evil' is not a category name"),  # list 3
    ("export_category_empty", EXPORT + ["--out", "{out}", "--category", ""], "is not a category name"),  # list 5
    ("export_category_slash", EXPORT + ["--out", "{out}", "--category", "a/b"], "is not a category name"),
    ("export_images", EXPORT + ["--out", "{out}", "--images", "100"], "--images 100: the test split"),  # list 5
    ("export_pool", EXPORT + ["--out", "{out}", "--images", "2", "--pool", "1"], "--pool: must be >= images"),
    ("export_victim", EXPORT + ["--out", "{w}/victim_bench", "--force", "--category", "tiny"],
     "../victim.txt"),  # list 3
    ("export_user_files", EXPORT + ["--out", "{w}/user_bench", "--force"], "usnprune did not write it"),  # list 3
    ("export_exists", EXPORT + ["--out", "{w}/bench", "--category", "tiny"], "pass --force"),
    ("export_delta", EXPORT + ["--out", "{out}", "--delta", "-1"], "--delta must be > 0"),
    ("export_nan_ckpt", ["export", "--checkpoint", "{w}/nan.pt", "--data", "{w}/data", "--out", "{out}"],
     "NaN or infinite"),
    ("export_timeout", EXPORT + ["--out", "{out}", "--timeout", "0"], "--timeout must be > 0"),
    ("export_two_names", ["export", "--checkpoint", "{w}/dense/model.pt", "{w}/dense/model.pt", "--category", "a",
                          "--data", "{w}/data", "--out", "{out}"], "--category: give one category name per checkpoint"),
    ("export_out_file", EXPORT + ["--out", "{w}/afile"], "is not a folder"),
    # verify
    ("verify_binary_csv", ["verify", "{w}/bench_binary_csv", "--out", "{out}"], "not a text file"),  # list 4
    ("verify_backend_base", ["verify", "{w}/bench", "--out", "{out}", "--backend", "{w}/base.yaml"],
     "is not a verifier backend"),  # list 4
    ("verify_binary_profile", ["verify", "{w}/bench", "--out", "{out}", "--backend", "{w}/binary.yaml"],
     "binary.yaml"),  # list 4
    ("verify_option_yaml", ["verify", "{w}/bench", "--out", "{out}", "--option", "threads={"],
     "--option 'threads={': the value is not a YAML scalar"),  # list 4
    ("verify_empty_box", ["verify", "{w}/bench_empty_box", "--out", "{out}"], "the input box is empty"),  # list 5
    ("verify_nan_onnx", ["verify", "{w}/bench_nan_onnx", "--out", "{out}"], "NaN or infinite value"),  # list 5
    ("verify_inf_threshold", ["verify", "{w}/bench_inf_threshold", "--out", "{out}"], "is not finite"),  # list 5
    ("verify_dup_paths", ["verify", "{w}/bench_dup", "--out", "{out}"], "is listed twice"),  # list 5
    ("verify_escape", ["verify", "{w}/bench_escape", "--out", "{out}"], "no '..'"),
    ("verify_unknown_backend", ["verify", "{w}/bench", "--out", "{out}", "--backend", "nosuch"], "unknown backend"),
    ("verify_out_file", ["verify", "{w}/bench", "--out", "{w}/afile"], "exists and is not a folder"),
    ("verify_not_a_run", ["verify", "{w}/bench", "--out", "{w}/user_train"], "not a usnprune run"),
    ("verify_exists", ["verify", "{w}/bench", "--out", "{w}/run"], "pass --resume"),
    ("verify_workers", ["verify", "{w}/bench", "--out", "{out}", "--workers", "0"], "--workers must be >= 1"),
    ("verify_option_kv", ["verify", "{w}/bench", "--out", "{out}", "--option", "threads"], "expected KEY=VALUE"),
    ("verify_option_key", ["verify", "{w}/bench", "--out", "{out}", "--option", "nosuchkey=1"], "nosuchkey"),
    ("verify_timeout_inf", ["verify", "{w}/bench", "--out", "{out}", "--timeout", "inf"], "--timeout must be > 0"),
    ("verify_no_bench", ["verify", "{w}/nosuch", "--out", "{out}"], "no such benchmark folder"),
    ("verify_resume_other", ["verify", "{w}/bench_dup", "--out", "{w}/run", "--resume"], "listed twice"),
    # report
    ("report_out_file", ["report", "{w}/run", "--out", "{w}/afile"], "exists and is not a folder"),  # list 4
    ("report_slow_time", ["report", "{w}/run_edited", "--out", "{out}"], "has time 'slow'"),  # list 4
    ("report_twice", ["report", "{w}/run", "{w}/run", "--out", "{out}"], "is given twice"),  # list 5
    ("report_user_file", ["report", "{w}/run", "--out", "{w}/user_report"], "summary.csv exists; pass --force"),  # list 3
    ("report_not_run", ["report", "{w}/bench", "--out", "{out}"], "not a usnprune run folder"),
    # run
    ("run_unknown_backend", ["run", "{cfg}"], "verify.backends: unknown backend 'nosuchverifier'"),  # list 5
    ("run_no_out", ["run", "{cfg}"], "missing required key out"),
    ("run_unknown_key", ["run", "{cfg}"], "unknown key trian"),
    ("run_seeds", ["run", "{cfg}"], "seeds repeat"),
    ("run_lr_inf", ["run", "{cfg}"], "optim.lr: expected a finite number"),
    ("run_missing", ["run", "{w}/nosuch.yaml"], "no such config file"),
    ("run_only", ["run", "{cfg:run_unknown_key}", "--only", "nosuch"], "unknown key trian"),
    # an unknown subcommand, a bad flag (a bare `usnprune` is no error: it prints its help)
    ("unknown_subcommand", ["data", "nosuch"], "invalid choice: 'nosuch'"),
    ("bad_flag", ["verify", "{w}/bench", "--out", "{out}", "--wrokers", "2"], "unrecognized arguments"),
]


def _fill(arg: str, w: Path, out: Path, case: str) -> str:
    if arg.startswith("{cfg"):
        name = arg[5:-1] if ":" in arg else case
        path = w / "configs" / f"{case}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(CONFIGS[name].format(w=w, out=out))
        return str(path)
    return arg.replace("{w}", str(w)).replace("{out}", str(out))


def test_there_are_at_least_60_cases_across_every_subcommand():
    commands = {argv[0] for _, argv, _ in CASES if argv}
    assert commands == {"data", "train", "eval", "prune", "export", "verify", "report", "run"}
    assert len(CASES) >= 60


@pytest.mark.parametrize("case, argv, match", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(world, case, argv, match, capsys):
    if case == "train_cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = world / "outs" / case
    args = [_fill(a, world, out, case) for a in argv]
    (world / "outs").mkdir(exist_ok=True)
    before = _snapshot(world)
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("usnprune") and ": error: " in lines[0] and "Traceback" not in err
    assert match in lines[0], lines[0]
    after = _snapshot(world)
    inside = f"outs/{case}"
    changed = sorted(k for k in set(before) | set(after)
                     if before.get(k) != after.get(k) and not (k == inside or k.startswith(inside + "/"))
                     and not k.startswith("configs"))
    assert not changed, f"files outside --out changed: {changed[:5]}"


@pytest.mark.parametrize("case", ["verify_empty_box", "train_lr_inf", "eval_empty_ckpt", "export_victim",
                                  "report_slow_time"])
def test_a_real_process_prints_one_line_too(world, case):
    _, argv, match = next(c for c in CASES if c[0] == case)
    out = world / "outs" / f"proc-{case}"
    args = [_fill(a, world, out, case) for a in argv]
    before = _snapshot(world)
    p = subprocess.run([sys.executable, "-m", "usnprune.driver.cli", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, USNPRUNE_NO_PROGRESS="1"))
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and match in lines[0], p.stderr
    after = _snapshot(world)
    assert {k: v for k, v in after.items() if not k.startswith(("outs", "configs"))} == \
        {k: v for k, v in before.items() if not k.startswith(("outs", "configs"))}
    assert (world / "victim.txt").read_text() == "must survive\n"


# ---- a full disk and a read-only folder -----------------------------------------------


def _mount(path: Path, options: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("the full-disk and read-only cases mount a tmpfs, which needs root")
    path.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip() or p.returncode}")


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 24 KiB: room for a few small files, not for a model or a dataset."""
    disk = tmp_path / "disk"
    _mount(disk, "size=24k")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.fixture
def read_only(tmp_path):
    disk = tmp_path / "ro"
    _mount(disk, "size=64k")
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _one_line(argv, capsys) -> str:
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("usnprune: error: "), err
    return lines[0]


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_full_disk_data_synth(world, small_disk, capsys):
    line = _one_line(["data", "synth", "--out", small_disk / "data", "--n-train", "300", "--n-test", "10"], capsys)
    assert "No space left on device" in line
    assert not {"synthetic.json", "annotations/keypoints_train.json"} & _files(small_disk / "data")


def test_full_disk_train(world, small_disk, capsys):
    cfg = small_disk.parent / "t.yaml"
    big = world / "configs" / "big.yaml"  # a network whose model.pt cannot fit
    cfg.write_text(f"data: {world}/data\nout: {small_disk}/net\narch: small\noptim: {{epochs: 1}}\n")
    line = _one_line(["train", "--config", cfg], capsys)
    assert "No space left on device" in line and not big.exists()
    assert not [f for f in _files(small_disk) if f.endswith(("model.pt", ".tmp"))] and not _files(small_disk / "net")


def test_full_disk_export(world, small_disk, capsys):
    line = _one_line(EXPORT[:1] + [a.replace("{w}", str(world)) for a in EXPORT[1:]]
                     + ["--out", small_disk / "bench", "--images", "2", "--delta", "0.5", "1"], capsys)
    assert "No space left on device" in line
    assert not any((small_disk / "bench" / v / "instances.csv").exists() for v in ("1.0", "2.0"))
    assert not (small_disk / "bench" / "benchmark.json").exists()


def test_full_disk_verify_then_resume_with_room(world, small_disk, capsys):
    run = small_disk / "run"
    subprocess.run(["mount", "-o", "remount,size=12k", str(small_disk)], check=True)  # run.json and a few rows
    line = _one_line(["verify", world / "bench", "--out", run, "--executor", "serial"], capsys)
    assert "No space left on device" in line and "--resume" in line
    from usnprune.driver.store import ResultStore

    kept = ResultStore(run).rows()
    from usnprune.driver.runfolder import benchmark_file

    # 20: both references of 10 keypoints (the list of the version folder verify reads)
    n = len(benchmark_file(world / "bench", "instances.csv").read_text().splitlines())
    assert len(kept) < n and not (run / "instances.csv").exists()
    subprocess.run(["mount", "-o", "remount,size=1m", str(small_disk)], check=True)
    assert main(["verify", str(world / "bench"), "--out", str(run), "--executor", "serial", "--resume"]) == 0
    rows = ResultStore(run).rows()
    assert len(rows) == n and all(rows[k]["finished_at"] == r["finished_at"] for k, r in kept.items())


def test_full_disk_report(world, small_disk, capsys):
    line = _one_line(["report", world / "run", "--out", small_disk / "report"], capsys)
    assert "No space left on device" in line
    assert not _files(small_disk / "report") & {"summary.csv", "report.json", "keypoints.csv"}


@pytest.mark.parametrize("command", ["train", "eval", "prune", "report", "run", "verify", "export", "data"])
def test_read_only_out(world, read_only, command, capsys):
    w, out = world, read_only / "out"
    cfg = read_only.parent / f"{command}.yaml"
    argv = {
        "train": ["train", "--config", cfg],
        "eval": ["eval", "--checkpoint", w / "dense/model.pt", "--data", w / "data", "--out", out / "t.csv"],
        "prune": ["prune", "--config", cfg],
        "report": ["report", w / "run", "--out", out],
        "run": ["run", cfg],
        "verify": ["verify", w / "bench", "--out", out],
        "export": ["export", "--checkpoint", w / "dense/model.pt", "--data", w / "data", "--out", out],
        "data": ["data", "synth", "--out", out, "--n-train", "2", "--n-test", "1"],
    }[command]
    cfg.write_text({
        "train": f"data: {w}/data\nout: {out}\narch: tiny\noptim: {{epochs: 1}}\n",
        "prune": f"checkpoint: {w}/dense/model.pt\ndata: {w}/data\nout: {out}\nmethod: random\n"
                 f"schedule: {{steps: 1, reg_epochs: 0, finetune_epochs: 0, final_epochs: 0}}\n",
        "run": f"out: {out}\ndata: {{path: {w}/data}}\n",
    }.get(command, ""))
    before = _snapshot(world)
    line = _one_line(argv, capsys)
    assert "Read-only file system" in line or "read-only" in line.lower() or "cannot" in line
    assert _snapshot(world) == before and not out.exists()
