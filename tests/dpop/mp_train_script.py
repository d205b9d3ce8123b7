"""Run by test_multiprocess.py under `accelerate launch`: one small training run (argv: ws dataset model run_id batch steps)."""

import sys

from dpop.config import TrainConfig
from dpop.train import train

workspace, dataset_id, model_path, run_id, batch, steps = sys.argv[1:7]
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
