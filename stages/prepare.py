"""Stage 1: raw dataset -> data/prepared/<dataset>/{train.pt, test.pt, meta.json} (checksummed)."""

from __future__ import annotations

import sys

from pipeline import params as P
from pipeline.artifacts import prepared_dir
from pipeline.data import prepare
from pipeline.runner import Context, stage
from pipeline.tracking import Tracker, project_root


@stage("prepare", target="dataset")
def main(ctx: Context) -> None:
    """Find, verify and convert one dataset listed under data.datasets."""
    name = ctx.name
    section = ctx.params.dataset(name)
    meta, source = prepare(name, section, prepared_dir(name), project_root() / "data" / "raw")
    print(f"prepared {name}: {meta['train_size']} train / {meta['test_size']} test, shape {meta['in_shape']}, "
          f"{meta['num_classes']} classes, from {source}", file=sys.stderr)
    stage_params = {"data": {"datasets": {name: P.as_dict(section)}}}
    tags = {"role": "data", "dataset": name, "params_hash": P.params_hash(section)}
    with Tracker("datasets").run(f"prepare@{name}", stage_params, tags) as mlrun:
        mlrun.log_metrics({k: meta[k] for k in ("train_size", "test_size", "num_classes")})
        mlrun.set_tags({"source": source, **{f"sha256.{k}": v for k, v in meta["sha256"].items()}})
        mlrun.log_artifact(prepared_dir(name) / "meta.json")


if __name__ == "__main__":
    sys.exit(main())
