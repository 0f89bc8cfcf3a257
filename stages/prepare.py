"""Stage 1: raw dataset -> data/prepared/<dataset>/{train.pt, test.pt, meta.json} (checksummed)."""

from __future__ import annotations

import sys

from pipeline import params as P
from pipeline.artifacts import prepared_dir
from pipeline.data import prepare
from pipeline.stage import run
from pipeline.tracking import Tracker, project_root


def prepare_dataset(name: str, params: P.Params) -> None:
    """Find, verify and convert one dataset listed under data.datasets."""
    section = params.dataset(name)
    meta, source = prepare(name, section, prepared_dir(name), project_root() / "data" / "raw")
    print(f"prepared {name}: {meta['train_size']} train / {meta['test_size']} test, shape {meta['in_shape']}, "
          f"{meta['num_classes']} classes, from {source}", file=sys.stderr)
    tracker = Tracker("datasets")
    stage_params = {"data": {"datasets": {name: P.as_dict(section)}}}
    with tracker.run(f"prepare@{name}", stage_params, {"role": "data", "dataset": name,
                                                         "params_hash": P.params_hash(section)}) as mlrun:
        mlrun.log_metrics({k: meta[k] for k in ("train_size", "test_size", "num_classes")})
        mlrun.set_tags({"source": source, **{f"sha256.{k}": v for k, v in meta["sha256"].items()}})
        mlrun.log_artifact(prepared_dir(name) / "meta.json")


def main(argv: list[str] | None = None) -> int:
    return run("prepare", prepare_dataset, argv)


if __name__ == "__main__":
    sys.exit(main())
