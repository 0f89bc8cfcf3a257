"""Stage `report`: reports/report.md and reports/report.html from every experiment's metrics and plots.

    python -m stages.report                  # the DVC stage (reads params.yaml, writes reports/)
    python -m stages.report --no-mlflow      # run ids read n/a; nothing is looked up
    python -m stages.report --out /tmp/rep   # elsewhere (figure links become relative to that directory)

Reads params.yaml as it is (only to know the experiments and which optional sections exist; the
report has no params of its own) and the files under metrics/ and plots/; see :mod:`pipeline.report`.
MLflow run ids are read from the tracking store of :func:`pipeline.tracking.tracking_uri`, never
written to it. The HTML is self-contained: figures are embedded, so it can be mailed or archived.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from pipeline.artifacts import _atomic_bytes
from pipeline.report import DEFAULT_MAX_INLINE_BYTES, TITLE, build_blocks, link_prefix, to_html, to_markdown
from pipeline.runner import EXIT_PARAMS
from pipeline.tracking import project_root, tracking_uri

OUT = Path("reports")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--out", default=str(OUT), help="output directory (default: reports)")
    ap.add_argument("--no-mlflow", action="store_true", help="do not look up MLflow run ids (they read n/a)")
    ap.add_argument("--max-inline-mb", type=float, default=DEFAULT_MAX_INLINE_BYTES / 1e6,
                    help="embed figures in the HTML up to this many MB, link the rest (default: %(default)g)")
    args = ap.parse_args(argv)
    path = Path(args.params)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except yaml.YAMLError as e:
        print(f"invalid params: {path}: not valid YAML: {e}", file=sys.stderr)
        return EXIT_PARAMS
    if not isinstance(raw, dict):
        print(f"invalid params: {path}: no params file, or not a mapping (run from the project root)", file=sys.stderr)
        return EXIT_PARAMS
    # an unreachable tracking server must not stall the report for minutes (MLflow retries 7 times)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    root = Path.cwd()
    out = Path(args.out)
    out_abs = out if out.is_absolute() else root / out
    prefix = link_prefix(root, out)
    uri = None if args.no_mlflow else tracking_uri()
    blocks, problems = build_blocks(raw, root, tracking_uri=uri, lookup_runs=not args.no_mlflow)
    markdown = to_markdown(blocks, prefix)
    page = to_html(blocks, root, prefix, TITLE, int(args.max_inline_mb * 1e6))
    _atomic_bytes(out_abs / "report.md", markdown.encode())
    _atomic_bytes(out_abs / "report.html", page.encode())
    missing = sum(1 for b in blocks if getattr(b, "kind", None) == "missing")
    print(f"report: wrote {out / 'report.md'} and {out / 'report.html'} ({len(page) / 1e6:.1f} MB); "
          f"{missing} missing part(s) noted" + (f"; {len(problems)} section(s) could not be rendered"
                                                 if problems else "")
          + ("" if project_root() == root.resolve() else f"; run ids from {uri}"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
