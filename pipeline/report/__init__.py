"""The report: every experiment's numbers beside the paper's, as Markdown and as one self-contained HTML page.

:func:`build_report` reads params.yaml (typed, :mod:`pipeline.params`) and every result file through
its model (:mod:`pipeline.results`): the paper-vs-reproduced table (the paper's numbers are data in
:mod:`.paper`), conversion exactness, evaluation, hardware-constraint sweeps, the L1 Pareto front, the
learning dynamics and the MLflow run behind each result. A stage that has not run (no file) is a line
saying so and naming the command that produces it; a result file that is there but malformed is an
:class:`~pipeline.errors.ArtifactError` naming the file and the field, and no report is written.

Modules: :mod:`.inputs` reads, :mod:`.runs` finds the MLflow runs by the params hash of each result,
:mod:`.builder` decides what each part shows, :mod:`.render` fills templates/report.md.j2 and renders that
Markdown into templates/report.html.j2. Given the same files, the output is byte-for-byte the same
except for the MLflow run ids.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import params as P
from . import builder, inputs, render, runs
from .render import DEFAULT_MAX_INLINE_BYTES, TITLE


def link_prefix(root: str | Path, out_dir: str | Path) -> str:
    """The way back from ``out_dir`` (absolute, or relative to ``root``) to ``root``: '../' for reports/."""
    root, out = Path(root), Path(out_dir)
    out_abs = out if out.is_absolute() else root / out
    prefix = os.path.relpath(root.resolve(), out_abs.resolve()).replace(os.sep, "/")
    return "" if prefix == "." else prefix + "/"


def build_report(params: P.Params, root: str | Path, *, out_dir: str | Path = "reports",
                 tracking_uri: str | None = None, lookup_runs: bool = True,
                 max_inline_bytes: int = DEFAULT_MAX_INLINE_BYTES) -> tuple[str, str]:
    """(markdown, html) of the report over the result files under ``root``.

    ``out_dir`` (relative to ``root``) is where the files will go: figure paths and links are relative
    to it. ``tracking_uri``: the MLflow store (default: $MLFLOW_TRACKING_URI, else <root>/mlflow.db);
    ``lookup_runs=False`` looks nothing up (every run id reads n/a). Run ids link to their page in the
    MLflow UI at :func:`runs.ui_base` ($TTFS_MLFLOW_UI, a tracking server's URL, else http://127.0.0.1:5000).
    """
    root = Path(root)
    out_abs = Path(out_dir) if Path(out_dir).is_absolute() else root / out_dir
    found = inputs.load(params, root)
    uri = (tracking_uri or runs.default_tracking_uri(root)) if lookup_runs else None
    run_refs, problem = runs.find_runs(uri, builder.run_keys(found), root)
    env = render.environment(builder.LABELS)
    ui = runs.ui_base(uri) if uri is not None else None
    md = render.markdown(env, builder.context(found, run_refs, problem, root, link_prefix(root, out_dir), ui))
    return md, render.html(env, md, out_abs, max_inline_bytes)


__all__ = ["DEFAULT_MAX_INLINE_BYTES", "TITLE", "build_report", "link_prefix"]
