"""Two CPU processes (gloo) under `accelerate launch` compute the training step one process computes with
the double batch: the same rows at every step, and the same gradient.

`accelerate launch --cpu` uses its single-process launcher (multi-CPU there means mpirun), so the
test uses the torchrun launcher (`--multi_gpu`); with no GPU present, `train` tells accelerate it runs
on CPU and the processes talk over gloo.

What "the same" means in float32, and why the test does not compare the losses of later steps:

- Rows: `ref_logps/*` of a step is the mean of the stored reference log-probs of its 4 rows, gathered
  from both ranks (2 + 2) or summed at once (4): the same 4 float32 numbers added in another order.
  Two orders of an n-term sum differ by at most 2(n−1)·u·Σ|terms| (u = 2⁻²⁴; Higham, Accuracy and
  Stability of Numerical Algorithms, §4.2), and log-probs are all ≤ 0, so Σ|terms|/n = |mean|.
- Gradient at step 1 (same weights in both set-ups): every gradient element is a sum over the
  N = 2 sequences × 4 pairs × padded width token positions of per-token contributions (the
  weight-gradient matmul reduces over tokens; padding adds exact zeros). One process sums all N in
  one matmul; two sum their own halves (other padded widths, so other kernel blocking) and DDP's
  all-reduce adds the halves and divides by 2 (exact). The bound 2(N−1)·u·Σ|terms| ≤ N·eps·Σ|terms|
  (eps = 2u) needs Σ|terms|, which the gradient does not show; we take the tensor's largest gradient
  element as the scale. Contributions of different tokens partly cancel, so Σ|terms| exceeds that
  scale (up to ~45x for this model, measured with hooks), but the N·u worst case assumes all N
  rounding errors share a sign; they add like a random walk (√N ≈ 31 for N ≈ 990), and 45·√N < 2N.
  Measured on the machine this was written on: at most 51·u·max|g| (the bound is ~2000·u·max|g|).
  Any real fault (ranks summing instead of averaging, a rank reading other rows, no all-reduce) moves
  the gradient by the order of max|g| itself, 10⁴x the bound.
- Losses after step 1 are not compared: the first AdamW update is lr·g/(|g|+ε) per element, ±lr for
  every element whatever its size, and a steep function of g where |g| is near ε = 1e-8, so rounding
  differences of 1e-12 there move weights by ~1e-7 and later losses by 6e-7 here, 2e-5 on another
  machine. That is the optimizer amplifying rounding, not a property of the two set-ups, and no float
  bound holds for it; the gradient check above is where the set-ups are compared.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dpop.data import ShardDataset
from dpop.refs import compute_reference_logps
from pipeline.catalog import Catalog
from tests.dpop.conftest import write_dataset

SCRIPT = Path(__file__).with_name("mp_train_script.py")
ROOT = Path(__file__).resolve().parents[2]
UNIT_ROUNDOFF = 2.0**-24  # float32: |fl(x) − x| ≤ u·|x|
EPS = torch.finfo(torch.float32).eps  # 2u
GLOBAL_BATCH = 4


def launch(args: list[str], processes: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    if processes == 1:
        command = [sys.executable, str(SCRIPT), *args]
    else:
        accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
        command = [
            accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517", str(SCRIPT), *args,
        ]  # fmt: skip
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr[-3000:]


def train_events(run_dir: Path) -> list[dict]:
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [event for event in events if event["split"] == "train"]


def sum_order_bound(terms: int, scale: float) -> float:
    """Two float32 sums of the same `terms` numbers whose absolute values add up to `scale`."""
    return 2 * (terms - 1) * UNIT_ROUNDOFF * scale


@pytest.mark.slow
def test_two_processes_match_one_process_with_double_batch(workspace, tiny_model_dir, tmp_path):
    dataset_id = compute_reference_logps(
        workspace, write_dataset(workspace, tiny_model_dir, train=32), tiny_model_dir, progress=False
    )
    common = [str(workspace.root), dataset_id, str(tiny_model_dir)]
    launch([*common, "2", "4", str(tmp_path / "two")], processes=2)
    launch([*common, str(GLOBAL_BATCH), "4", str(tmp_path / "one")], processes=1)

    # every rank ran the stage under the same (content) run id; the runner's main process is accelerate's
    ranks = [json.loads((tmp_path / "two" / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["run_id"] == ranks[1]["run_id"]
    assert [(r["runner_main"], r["accelerate_main"]) for r in ranks] == [(True, True), (False, False)]
    two_procs = ranks[0]["run_id"]
    one_proc = json.loads((tmp_path / "one" / "rank-0.json").read_text())["run_id"]
    assert one_proc != two_procs  # another world size and batch: another run
    two = train_events(workspace.run_dir(two_procs))
    one = train_events(workspace.run_dir(one_proc))
    # rank 0 alone writes the metrics: no duplicated events
    assert [event["step"] for event in two] == [event["step"] for event in one] == [1, 2, 3, 4]
    for ours, theirs in zip(two, one, strict=True):  # the same rows at every step
        for key in ("ref_logps/chosen", "ref_logps/rejected"):
            tolerance = sum_order_bound(GLOBAL_BATCH, abs(theirs[key]))
            assert abs(ours[key] - theirs[key]) <= tolerance, (ours["step"], key, ours[key], theirs[key])

    gradients_two = load_file(tmp_path / "two" / "step1.safetensors")
    gradients_one = load_file(tmp_path / "one" / "step1.safetensors")
    assert gradients_two.keys() == gradients_one.keys() and len(gradients_one) > 0
    longest = int(ShardDataset.open(workspace, dataset_id, "train").lengths().max())
    token_terms = 2 * GLOBAL_BATCH * longest
    for key, expected in gradients_one.items():
        scale = float(expected.abs().max())
        difference = float((gradients_two[key] - expected).abs().max())
        assert scale > 0 and difference <= token_terms * EPS * scale, (
            f"parameter {key} {tuple(expected.shape)}: gradients differ by {difference / (UNIT_ROUNDOFF * scale):.0f} "
            f"u·max|g|, more than {token_terms * EPS / UNIT_ROUNDOFF:.0f}"
        )

    assert len([a for a in Catalog(workspace).find("run") if a.id == two_procs]) == 1
    assert (workspace.run_dir(two_procs) / "run.json").is_file()
    events = [json.loads(line) for line in workspace.lineage_events_path.read_text().splitlines()]
    train_events_of_two = [e["eventType"] for e in events if e["job"]["name"] == "train"][:2]
    assert train_events_of_two == ["START", "COMPLETE"]  # rank 0 alone published the two-process run
