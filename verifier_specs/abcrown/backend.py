"""The abcrown backend: runs a chunk of instances through alpha-beta-CROWN and reports
each instance as soon as its answer streams out (see the package docstring)."""

from __future__ import annotations

import gzip
import json
import math
import time
from typing import Any, Callable, Iterable

from usnprune.config import from_dict
from usnprune.errors import ConfigError
from usnprune.export.vnnlib import parse_file
from usnprune.process import Process

from ..base import Backend, Instance, Verdict
from ..replay import replay
from .installation import Installation
from .scratch import _Scratch, _Staged
from .settings import AbcrownSettings, _set_dotted, config_text
from .transcript import (
    HEADER_LINE,
    InstanceOutput,
    TranscriptParser,
    classify,
    load_results_pickle,
    parse_counterexample,
    parse_results_file,
)


class AbcrownBackend(Installation, Backend):
    name = "abcrown"

    def __init__(self, profile: dict | None = None, **options: Any) -> None:
        dotted = {k: options.pop(k) for k in list(options) if k.startswith("abcrown_config.")}
        super().__init__(profile, **options)
        self.profile.setdefault("abcrown_config", {})
        if not isinstance(self.profile["abcrown_config"], dict):
            raise ConfigError(f"abcrown profile: abcrown_config must be a mapping, got {self.profile['abcrown_config']!r}")
        self.profile["abcrown_config"] = json.loads(json.dumps(self.profile["abcrown_config"]))
        for k, v in dotted.items():
            if v is not None:
                _set_dotted(self.profile["abcrown_config"], k[len("abcrown_config."):], v)
        where = f"abcrown profile {self.profile.get('profile_name', '')}".strip()
        self.settings = from_dict(AbcrownSettings, self.profile, where)

    # -- where the tool is


    def verify(self, instance: Instance) -> Verdict:
        out: list[Verdict] = []
        self.run([instance], lambda _inst, v: out.append(v))
        return out[0]

    def run(self, instances: Iterable[Instance], on_result: Callable[[Instance, Verdict], None]) -> None:
        insts = list(instances)
        if not insts:
            return
        self.locate()  # unconfigured: the driver turns this into error rows for the chunk
        with _Scratch(self.settings) as ws:
            staged = []
            for i, inst in enumerate(insts):
                try:
                    staged.append(ws.stage(inst, i))
                except (OSError, EOFError, gzip.BadGzipFile) as e:
                    on_result(inst, Verdict("error", 0.0, None, f"cannot copy the instance files: {e}"))
            ws.write_config(config_text(self.settings))
            if self.settings.batch and len(staged) > 1:
                self._run_batch(ws, staged, on_result)
            else:
                for s in staged:
                    on_result(s.inst, self._run_single(ws, s))

    def _limit(self, inst: Instance, first: bool) -> float:
        return inst.timeout + self.settings.hard_limit_slack + (self.settings.startup_slack if first else 0.0)

    def _where(self, ws: "_Scratch") -> str:
        return f"; working folder kept at {ws.path}" if self.settings.keep_scratch else ""

    def _error_from(self, proc: Process, code: int, what: str, ws: "_Scratch") -> str:
        return (f"alpha-beta-CROWN {what} (exit code {code}){self._where(ws)}; last lines of its output:\n"
                + proc.tail_text())

    def _run_batch(self, ws: "_Scratch", items: list[_Staged], on_result) -> None:
        remaining = list(items)
        rerun: list[tuple[_Staged, str]] = []
        run_no = 0
        while remaining:
            run_no += 1
            csv_name = ws.write_instances(remaining, run_no)
            ws.clear_outputs()
            cmd = self.command(ws.config, ws.results, ws.cex, csv_name=csv_name, root=ws.root)
            with Process(cmd, ws.cwd, self._env(), ws.log, self.settings.tail_lines) as proc:
                k = self._one_batch_process(ws, proc, remaining, on_result, rerun)
            remaining = remaining[k:]
        for item, status in rerun:
            v = self._run_single(ws, item)
            v.message = f"instances-file run said {status} but its counterexample was not recovered; " \
                        f"verified again alone: {v.message}"
            on_result(item.inst, v)

    def _one_batch_process(self, ws: "_Scratch", proc: Process, remaining: list[_Staged], on_result,
                           rerun: list) -> int:
        """Follow one instances-file process; returns how many of ``remaining`` are settled."""
        parser = TranscriptParser()
        k = 0  # position in ``remaining`` of the instance being verified
        t_ref = proc.started  # when the current instance's clock started
        startup = None
        killed = False
        while k < len(remaining):
            limit = self._limit(remaining[k].inst, first=(k == 0))
            line = proc.next_line(t_ref + limit - time.monotonic())
            if line is Process.EOF:
                break
            if line is None:  # hard limit
                if time.monotonic() - t_ref < limit:
                    continue
                proc.kill()
                killed = True
                elapsed = time.monotonic() - t_ref
                on_result(remaining[k].inst, Verdict(
                    "timeout", elapsed, None,
                    f"hard limit: no answer {elapsed:.1f} s after the instance started (timeout "
                    f"{remaining[k].inst.timeout:g} s + slack {limit - remaining[k].inst.timeout:g} s); "
                    f"alpha-beta-CROWN killed (process group){self._where(ws)}"))
                k += 1
                break
            if startup is None and HEADER_LINE.match(line.rstrip("\n")):
                startup = time.monotonic() - proc.started
            done = parser.feed(line)
            if done is None:
                continue
            item = remaining[k]
            if done.idx is not None and done.idx != k:
                # every instances file starts at idx 0, so a Result for another idx means the
                # transcript is out of step: trust no verdict of this process from here on
                proc.kill()
                killed = True
                on_result(item.inst, Verdict(
                    "error", time.monotonic() - t_ref, None,
                    f"alpha-beta-CROWN's output is out of step (a result for idx {done.idx} while "
                    f"expecting idx {k}); the process was stopped and the rest run again{self._where(ws)}"))
                k += 1
                break
            self._settle(ws, item, done, startup if k == 0 else None, on_result, rerun)
            k += 1
            t_ref = time.monotonic()
        if not killed:
            if k >= len(remaining):  # all answered: let it print its summary, within bounds
                end = time.monotonic() + self.settings.hard_limit_slack + 30.0
                while (line := proc.next_line(end - time.monotonic())) is not Process.EOF:
                    if line is None:
                        proc.kill()  # its answers are all in; a hang on the way out loses nothing
                        break
            code = proc.wait()
            if k < len(remaining):
                k = self._after_early_exit(ws, proc, code, parser, remaining, k, t_ref, on_result, rerun)
        return k

    def _after_early_exit(self, ws, proc: Process, code: int, parser: TranscriptParser, remaining: list[_Staged],
                          k: int, t_ref: float, on_result, rerun) -> int:
        """The process ended with instances left: answers it saved but did not print are
        taken from its results pickle; the instance in flight gets an ``error`` with the tail
        of the output; with nothing started at all, every remaining instance does."""
        try:
            saved = load_results_pickle(ws.results.read_bytes()) if ws.results.is_file() else []
        except Exception:
            saved = []
        while k < len(saved) and k < len(remaining):  # answered, but the line was lost
            status, seconds = saved[k]
            self._settle(ws, remaining[k], InstanceOutput(k, status, seconds), None, on_result, rerun)
            k += 1
        if k >= len(remaining):
            return k
        what = "exited" if code == 0 else "failed"
        if k == 0 and not parser.started:  # it never reached an instance: the same for all
            msg = self._error_from(proc, code, f"{what} before verifying any instance", ws)
            for item in remaining:
                on_result(item.inst, Verdict("error", 0.0, None, msg))
            return len(remaining)
        on_result(remaining[k].inst, Verdict("error", time.monotonic() - t_ref, None,
                                             self._error_from(proc, code, f"{what} on this instance", ws)))
        return k + 1

    def _settle(self, ws: "_Scratch", item: _Staged, done: InstanceOutput, startup: float | None, on_result,
                rerun: list) -> None:
        """Report a finished instance, or queue it for a single run when it is falsified but
        its counterexample cannot be recovered from this run."""
        verdict = self._batch_verdict(ws, item, done, startup)
        if verdict is None:
            rerun.append((item, done.status or "?"))
        else:
            on_result(item.inst, verdict)

    def _batch_verdict(self, ws: "_Scratch", item: _Staged, done: InstanceOutput,
                       startup: float | None) -> Verdict | None:
        """The verdict for a finished instance of an instances-file run; None when it is
        falsified but its counterexample cannot be recovered from this run."""
        status, message = classify(done.status or "", done.seconds, item.inst.timeout, done.timed_out,
                                   self.settings.accept_late)
        if startup is not None:
            message += f"; process start-up {startup:.1f} s"
        cex = None
        if status == "falsified":
            cex = self._take_counterexample(ws, item, done.adv_example)
            if cex is None:
                return None
        elif ws.cex.exists():
            ws.cex.unlink()
        return Verdict(status, float(done.seconds or 0.0), cex, message)

    def _take_counterexample(self, ws: "_Scratch", item: _Staged, adv: list[float] | None) -> tuple[float, ...] | None:
        """This instance's counterexample from the shared file, if the file provably holds it."""
        try:
            text = ws.cex.read_text()
        except OSError:
            return None
        finally:
            if ws.cex.exists():
                ws.cex.unlink()  # a later instance must never find this one's point
        x = parse_counterexample(text)
        if x is None or adv is None or len(adv) != len(x):
            return None
        if any(not math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) for a, b in zip(x, adv)):
            return None  # the file was written by another instance
        return x if _replays(item.inst, x) else None

    def _run_single(self, ws: "_Scratch", item: _Staged) -> Verdict:
        ws.clear_outputs()
        cmd = self.command(ws.config, ws.results, ws.cex, onnx=str(ws.root / item.onnx),
                           vnnlib=str(ws.root / item.vnnlib), timeout=item.inst.timeout)
        with Process(cmd, ws.cwd, self._env(), ws.log, self.settings.tail_lines) as proc:
            return self._one_single_process(ws, proc, item)

    def _one_single_process(self, ws: "_Scratch", proc: Process, item: _Staged) -> Verdict:
        parser = TranscriptParser()
        limit = self._limit(item.inst, first=True)
        done = None
        while True:
            line = proc.next_line(proc.started + limit - time.monotonic())
            if line is Process.EOF:
                break
            if line is None:
                if time.monotonic() - proc.started < limit:
                    continue
                proc.kill()
                elapsed = time.monotonic() - proc.started
                return Verdict("timeout", elapsed, None,
                               f"hard limit: no answer after {elapsed:.1f} s (timeout {item.inst.timeout:g} s + slack "
                               f"{limit - item.inst.timeout:g} s, start-up included); alpha-beta-CROWN killed "
                               f"(process group){self._where(ws)}")
            done = parser.feed(line) or done
        code = proc.wait()
        wall = time.monotonic() - proc.started
        if code != 0:
            return Verdict("error", wall, None, self._error_from(proc, code, "failed", ws))
        try:
            word, x = parse_results_file(ws.results.read_text())
        except OSError:
            word, x = "", None
        if not word:
            return Verdict("error", wall, None, self._error_from(proc, code, "wrote no results file", ws))
        seconds = done.seconds if done is not None and done.seconds is not None else wall
        status, message = classify(word, seconds, item.inst.timeout, bool(done and done.timed_out) or parser.current.timed_out,
                                   self.settings.accept_late)
        message += f" (single-instance run, {wall:.1f} s with start-up)"
        if status == "falsified":
            if x is None:
                try:
                    x = parse_counterexample(ws.cex.read_text())
                except OSError:
                    x = None
            if x is None:
                return Verdict("error", seconds, None,
                               f"alpha-beta-CROWN answered sat without a counterexample{self._where(ws)}")
        return Verdict(status, float(seconds), x, message)


def _replays(inst: Instance, x: tuple[float, ...]) -> bool:
    """Whether ``x`` replays through onnxruntime against the instance's property (the trust
    layer replays every counterexample again)."""
    try:
        return bool(replay(str(inst.onnx_path), parse_file(inst.vnnlib_path), x).ok)
    except Exception:
        return True  # unreadable files: the driver's own check reports them


BACKEND = AbcrownBackend
