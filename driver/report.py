"""``usnprune report RUN [RUN ...] --out DIR``: certified accuracy and stability, in tables,
plots and one report.md.

Files (docs/formats.md):

* ``summary.csv``   -- per run x network x delta: the base (visible keypoints), clean /
  certified / empirical accuracy and stability in percent, verdict counts, time quantiles
  in seconds (driver/tables.py says what each share means);
* ``keypoints.csv`` -- the same per keypoint;
* ``report.md``     -- the settings in one sentence, one table method x sparsity, the checks,
  the per-keypoint table and the plots (driver/report_md.py);
* ``certified_accuracy.png``, ``certified_stability.png``, ``verification_time.png``
  (driver/plots.py) and ``sheets/<network>.png`` (driver/sheets.py);
* ``report.json``   -- the runs, the settings, and the rows that failed a check.

The run folders are only read. The outputs are staged and moved into ``--out`` together
(usnprune.files.OutputFolder): an existing file is replaced only with ``force`` and only
when usnprune wrote it.

A row whose certified accuracy exceeds its clean or empirical accuracy, or whose certified
stability exceeds its empirical stability, is an error: ``report`` exits 1 and the
experiment's report stage fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from usnprune.files import OutputFolder

from . import plots, report_md, sheets as contact
from .tables import (ReportError, check_rows, keypoint_table, load_run, settings,  # noqa: F401 (API)
                     summary_table)


OUTPUTS = ("report.md", "summary.csv", "keypoints.csv", *plots.REPORT_PLOTS, "report.json")


def _distinct(runs: list[str | Path]) -> None:
    seen: dict[Path, str] = {}
    for r in runs:
        real = Path(r).resolve()
        if real in seen:
            raise ReportError(f"{r}: the run is given twice (as {seen[real]} too); its rows would count twice")
        seen[real] = str(r)
    names = [Path(r).resolve().name for r in runs]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ReportError(f"two runs are both named {clash[0]!r}; the tables tell runs apart by folder name: "
                          f"rename one")


def report(runs: list[str | Path], out: str | Path, sheets: bool = True, log=print, force: bool = False) -> dict:
    """report.md, tables and plots of ``runs`` into ``out``, written together at the end."""
    _distinct(runs)
    folder = OutputFolder(out, "report", force, inputs=[Path(r) / "instances.csv" for r in runs])
    folder.claim(OUTPUTS)
    log(f"report: reading {len(runs)} run folder{'s' if len(runs) > 1 else ''}")
    df = pd.concat([load_run(r) for r in runs], ignore_index=True)
    summary, kp = summary_table(df), keypoint_table(df)
    sets = settings(df)
    problems = check_rows(summary)
    with folder.staging(OUTPUTS, remove_stale=True) as stage:
        summary.to_csv(stage.path("summary.csv"), index=False)
        kp.to_csv(stage.path("keypoints.csv"), index=False)
        figures = plots.report_plots(summary, df, sets, stage.path)
        sheet_files = contact.write_sheets(df, stage.path, log=log) if sheets else []
        stage.path("report.md").write_text(report_md.render(summary, kp, sets, problems, figures, sheet_files, df))
        stage.path("report.json").write_text(json.dumps({
            "runs": [str(r) for r in runs], "problems": problems,
            "settings": [{k: v for k, v in s.items() if k != "meta"} for s in sets]}, indent=2, default=str))
    log(report_md.console_table(summary))
    for p in problems:
        log(f"ERROR: {p}")
    log(f"wrote {out}/report.md, summary.csv, keypoints.csv, {', '.join(figures)}" + (", sheets/" if sheet_files else ""))
    return {"summary": summary, "keypoints": kp, "problems": problems}
