"""Upper bounds for the numbers a run config, `plan` and the CLI flags accept (light: no imports).

No real run comes near them. They exist so that a typo or a hostile value (a 400-digit max_steps,
100000 dataloader workers, a GPU of 1e400 GB) is an error that names the field, instead of a crash far
away (an int too large for a float or a C long) or a machine brought down at train time. The schema
generator (generate.py), the validator, plan() and the CLI flags all read them from here.
"""
from __future__ import annotations

MAX_STEPS = 10**9            # optimizer steps (also logging/save/eval/warmup steps): ~30 years at 1 step/s
MAX_EPOCHS = 10**4           # preference runs use 1-5 epochs; 10,000 passes over a data set is a typo
MAX_BATCH = 1 << 16          # sequences per device per step (65,536): no accelerator holds that many
MAX_ACCUMULATION = 1 << 16   # micro-batches per optimizer step
MAX_TOKENS = 1 << 24         # tokens per sequence (16.8M): above every released model's context (10M)
MAX_WORKERS = 1024           # data-loading processes / dataset_num_proc: more than the cores of one machine
MAX_RANK = 1 << 16           # lora_r / lora_alpha: a rank cannot exceed the hidden size (≤ 16,384 today)
MAX_GPUS = 1 << 16           # GPUs in `hardware:` (65,536: the largest clusters)
MAX_GPU_MEMORY_GB = 1 << 14  # memory of one GPU (16 TB; an H200 has 141 GB)
MAX_MODEL_PARAMS = 1e14      # 100T parameters, ~50x the largest published dense model
MAX_SECONDS = 10**9          # max_wall_time, ddp_timeout, diagnose.every_s: ~30 years
MAX_PAIRS = 10**12           # preference pairs in a data set (`plan --dataset-size`)
MAX_SEED = 2**32 - 1         # numpy's seed range: transformers' set_seed passes the seed to np.random.seed
MAX_INT = 2**63 - 1          # any other integer: what torch's and numpy's int64 hold
