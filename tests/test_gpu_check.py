"""benchmarks/gpu_check.py: skips cleanly without CUDA; every part runs on the CPU at toy scale."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="the skip path is for machines without CUDA")
def test_without_cuda_it_skips_with_a_message_and_a_json_result(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["skipped"] is True and "no CUDA device" in result["reason"]
    assert "no CUDA device" in capsys.readouterr().err


def test_every_part_runs_on_the_cpu_at_toy_scale(tmp_path):
    """Conversion exact in float64, both epochs timed, the two-process (gloo) step equal to one process."""
    assert gpu_check.main(["--cpu", "--out", str(tmp_path / "r.json"), "--samples", "32", "--batch", "8"]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    conv = result["conversion"]
    assert conv["exact"] and conv["agreement"] == 1.0 and conv["causality_violations"] == 0
    assert conv["max_rel_logit_diff"] <= 1e-9
    assert result["epoch"]["relu"]["samples_per_s"] > 0 and result["epoch"]["snn"]["samples_per_s"] > 0
    ddp = result["ddp"]
    assert ddp["world_size"] == 2 and ddp["windows_moved"] > 0
    assert ddp["max_diff_vs_one_process"] <= 1e-10
