"""Run by test_multiprocess.py (under `accelerate launch` or plain python): one small training run.

argv: workspace dataset model run_id batch steps gradients_dir. The gradient the optimizer is handed at
step 1 (after the all-reduce across ranks, before the update) is saved by rank 0 to
`<gradients_dir>/step1.safetensors`, keyed `<param group>.<index>` (the same order in every set-up),
through torch's global optimizer hook: the training itself runs unchanged."""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.optim.optimizer import register_optimizer_step_pre_hook

from dpop.config import TrainConfig
from dpop.train import train

workspace, dataset_id, model_path, run_id, batch, steps, gradients_dir = sys.argv[1:8]
steps_seen = []


def save_first_gradient(optimizer, args, kwargs):
    steps_seen.append(1)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if len(steps_seen) == 1 and rank == 0:
        gradients = {
            f"{group}.{index}": parameter.grad.detach().clone()
            for group, values in enumerate(optimizer.param_groups)
            for index, parameter in enumerate(values["params"])
            if parameter.grad is not None
        }
        Path(gradients_dir).mkdir(parents=True, exist_ok=True)
        save_file(gradients, str(Path(gradients_dir) / "step1.safetensors"))


register_optimizer_step_pre_hook(save_first_gradient)
config = TrainConfig(
    max_steps=int(steps),
    per_device_train_batch_size=int(batch),
    per_device_eval_batch_size=4,
    logging_steps=1,
    learning_rate=1e-3,
    save_steps=1000,
    disable_tqdm=True,
)
train(workspace, dataset_id, model_path, config, run_id=run_id)
