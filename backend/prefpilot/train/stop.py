"""Stop flags shared by the SIGTERM handler (entry.py) and the training callback.

A module with no imports: the handler can run in the middle of any import (torch, transformers), and a
handler that itself imported a heavy module there would fail on the half-initialised one.
"""
STOP = {
    "requested": False,  # a graceful stop: checkpoint after the current step, then leave the loop
    "in_loop": False,  # inside Trainer.train(), where a graceful stop is possible
    "signalled": False,  # any SIGTERM seen: an error raised after it is the cancel's doing
}
