"""Stage `tune_summary`: metrics/<exp>/tune_summary.json, the tune stage's headline numbers.

    python -m stages.tune_summary tiny_fc2

A separate stage from `summary` because only the experiments listed under params.yaml ``tune`` have a
study; the keys are :data:`stages.summary.TUNE_HEADLINE`.
"""

from __future__ import annotations

import sys

from pipeline.artifacts import write_json
from pipeline.results import TuneResult
from pipeline.runner import Context, stage
from stages.summary import tune_headline


@stage("tune_summary")
def main(ctx: Context) -> None:
    """Write the experiment's tune headline metrics file."""
    paths = ctx.experiment.paths
    write_json(paths.metrics("tune_summary"), tune_headline(TuneResult.read(paths.metrics("tune"), ctx.name)))
    print(f"tune_summary {ctx.name}: {paths.metrics('tune_summary')}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
