"""Helpers shared by the run-manager tests (local runs in test_runs.py, Slurm jobs in test_slurm.py)."""
import time


def config(tiny, **extra):
    """A run config that trains the tiny model on builtin pairs in seconds (a high rate: a few steps move it)."""
    return {"model_name_or_path": str(tiny), "dataset_path": "builtin:arith-prefs", "per_device_train_batch_size": 2,
            "learning_rate": 5e-3, "max_length": 64, "save_strategy": "no", **extra}


def wait_for(pred, timeout=240, what="condition", every=0.2):
    """``pred()``'s first truthy value, polled every ``every`` seconds; fails the test after ``timeout``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")
