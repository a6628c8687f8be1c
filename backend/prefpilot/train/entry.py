"""`python -m prefpilot.train.entry CONFIG --run-dir DIR [--resume]`: what `accelerate launch` and the run manager start."""
import argparse
import os
import signal
import sys

from ..config import load_config
from ..errors import PrefpilotError
from .stop import STOP
from .trainer import train


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--max-bad-rows", type=int, default=0)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--log-stderr", action="store_true",
                    help="log to stderr instead of train.log (the run manager points stderr at train.log)")
    a = ap.parse_args(argv)
    # Under Slurm a cancel or the time-limit signal reaches every process of the step: the trainer and, a moment
    # later, the same SIGTERM forwarded by accelerate's launcher. A repeat must not turn the checkpoint-and-stop
    # into an immediate stop there (scancel ends the job after the grace period anyway).
    _SIGTERM["repeat_stops"] = not os.environ.get("SLURM_JOB_ID")
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        train(load_config(a.config), a.run_dir, resume=a.resume, max_bad_rows=a.max_bad_rows,
              progress=a.progress or None, log_file=not a.log_stderr)
    except PrefpilotError as exc:
        print(f"prefpilot: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("prefpilot: cancelled", file=sys.stderr)
        return 130
    finally:
        _shutdown_distributed()
    return 0


def _shutdown_distributed() -> None:
    """Tear down the gloo/NCCL process group before exit: left to interpreter shutdown, its threads can abort
    a rank ("terminate called without an active exception"), and torchrun then fails the whole run."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


_SIGTERM = {"repeat_stops": True}


def _on_sigterm(signum, frame):
    """First SIGTERM inside the training loop: finish the step, checkpoint, stop (state cancelled).

    Outside the loop (loading data or the model), or on a second SIGTERM (not under Slurm): stop now.
    """
    STOP["signalled"] = True  # no import here: this can run in the middle of one
    if STOP["requested"] and not _SIGTERM["repeat_stops"]:
        return  # the graceful stop is under way
    if STOP["in_loop"] and not STOP["requested"]:
        STOP["requested"] = True
        print("prefpilot: stop requested; saving a checkpoint after this step", file=sys.stderr, flush=True)
        return
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
