"""Stage `report`: reports/report.md and reports/report.html from params.yaml and every stage's results.

    python -m stages.report                  # the DVC stage (reads params.yaml, writes reports/)
    python -m stages.report --no-mlflow      # run ids read n/a; nothing is looked up
    python -m stages.report --out /tmp/rep   # elsewhere (figure links become relative to that directory)

A stage that has not run is shown as absent, with the command that produces it; a result file that is
there but malformed stops the report with the file and the field (see :mod:`pipeline.report`). MLflow
run ids are read, never written. The HTML is self-contained: figures are embedded.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.report import DEFAULT_MAX_INLINE_BYTES, build_report
from pipeline.runner import Context, stage
from pipeline.tracking import tracking_uri


def _arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--out", default="reports", help="output directory (default: reports)")
    ap.add_argument("--no-mlflow", action="store_true", help="do not look up MLflow run ids (they read n/a)")
    ap.add_argument("--max-inline-mb", type=float, default=DEFAULT_MAX_INLINE_BYTES / 1e6,
                    help="embed figures in the HTML up to this many MB, link the rest (default: %(default)g)")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@stage("report", target=None, arguments=_arguments)
def main(ctx: Context) -> None:
    """Write the paper-vs-reproduced report of every experiment, as Markdown and self-contained HTML."""
    args = ctx.args
    # an unreachable tracking server must not stall the report for minutes (MLflow retries 7 times)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    uri = None if args.no_mlflow else tracking_uri()  # the repository's store, from DVC's temporary copies too
    md, page = build_report(ctx.params, Path.cwd(), out_dir=args.out, tracking_uri=uri,
                            lookup_runs=not args.no_mlflow, max_inline_bytes=int(args.max_inline_mb * 1e6))
    out = Path(args.out)
    _write(out / "report.md", md)
    _write(out / "report.html", page)
    absent = md.count("\n> Not run:") + md.count("\n> Plot")
    print(f"report: wrote {out / 'report.md'} and {out / 'report.html'} ({len(page) / 1e6:.1f} MB); "
          f"{absent} absent part(s) noted", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
