"""`python -m prefpilot.train.entry CONFIG --run-dir DIR [--resume]`: what `accelerate launch` and the run manager start."""
import argparse
import sys

from ..config import load_config
from ..errors import PrefpilotError
from .trainer import train


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--max-bad-rows", type=int, default=0)
    ap.add_argument("--progress", action="store_true")
    a = ap.parse_args(argv)
    try:
        train(load_config(a.config), a.run_dir, resume=a.resume, max_bad_rows=a.max_bad_rows,
              progress=a.progress or None)
    except PrefpilotError as exc:
        print(f"prefpilot: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
