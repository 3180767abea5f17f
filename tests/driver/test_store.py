import json
import multiprocessing as mp
import os
import signal
import time

from usnprune.driver.store import ResultStore


def _row(i):
    return {"onnx": f"onnx/a/img{i}.onnx", "vnnlib": f"vnnlib/a/p{i}.vnnlib", "verdict": "certified", "time": 0.1}


def test_rows_survive_a_torn_line_and_later_appends_start_fresh(tmp_path):
    store = ResultStore(tmp_path)
    store.append(_row(0), "w1")
    with open(tmp_path / "results" / "w1.jsonl", "ab") as f:  # a writer killed mid-line
        f.write(b'{"onnx": "onnx/a/img1.onnx", "vnn')
    assert set(store.rows()) == {"onnx/a/img0.onnx,vnnlib/a/p0.vnnlib"}
    store.append(_row(2), "w1")
    assert set(store.rows()) == {"onnx/a/img0.onnx,vnnlib/a/p0.vnnlib", "onnx/a/img2.onnx,vnnlib/a/p2.vnnlib"}


def test_later_row_wins_and_writers_merge(tmp_path):
    store = ResultStore(tmp_path)
    store.append(dict(_row(0), verdict="timeout", finished_at=1.0), "w1")
    store.append(dict(_row(0), verdict="certified", finished_at=2.0), "w2")
    store.append(_row(1), "w2")
    rows = store.rows()
    assert rows["onnx/a/img0.onnx,vnnlib/a/p0.vnnlib"]["verdict"] == "certified" and len(rows) == 2


def _hammer(path, writer, n):
    store = ResultStore(path)
    for i in range(n):
        store.append(dict(_row(f"{writer}-{i}"), pad="x" * 5000), writer)


def test_concurrent_writers_to_one_file_lose_nothing(tmp_path):
    procs = [mp.get_context("fork").Process(target=_hammer, args=(tmp_path, "shared", 200)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    lines = (tmp_path / "results" / "shared.jsonl").read_bytes().splitlines()
    assert len(lines) == 800 and all(json.loads(l)["pad"] == "x" * 5000 for l in lines)


def test_kill_9_loses_only_what_was_in_flight(tmp_path):
    p = mp.get_context("fork").Process(target=_hammer, args=(tmp_path, "victim", 100000))
    p.start()
    time.sleep(0.5)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    rows = ResultStore(tmp_path).rows()
    assert len(rows) > 0
    raw = (tmp_path / "results" / "victim.jsonl").read_bytes()
    complete = raw.count(b"\n")
    assert len(rows) == complete  # every complete line parses; at most a torn tail is skipped
