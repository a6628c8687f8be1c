"""Judge the trained model, not only its curves (light at import: torch loads only inside an evaluation).

metrics.py  pure arithmetic: preference accuracies and margins, repetition loops, generation rates
judge.py    evaluation findings, thresholds from the diagnostics skill's findings.yaml (`evaluation:`)
engine.py   the model side (torch): TRL's own pair preparation, log-probs, greedy generation
run.py      one run: which held-out pairs, which checkpoints, eval/report.json and the best checkpoint
background.py  the same evaluation as a detached process, for the MCP server (which never imports torch)
"""
