"""A PNG of the curves a person checks first, with each finding's steps shaded."""
from __future__ import annotations

from pathlib import Path

from .parse import History

COLOURS = {"error": "#d62728", "warning": "#ff7f0e", "info": "#1f77b4"}
PANELS = (("rewards/margins", "margin"), ("rewards/accuracies", "accuracy"),
          (("logps/chosen", "logps/rejected"), "log-prob"), ("loss", "loss"))


def plot(hist: History, report: dict, out) -> Path | None:
    """Write the PNG to ``out`` (a path, or a binary file object such as BytesIO)."""
    import matplotlib
    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    if isinstance(out, (str, Path)):
        out = Path(out)
        if not out.parent.is_dir():  # never create folders the user did not ask for (a typo could hit /)
            from ..errors import PrefpilotError
            raise PrefpilotError(f"--plot {out}: the folder {out.parent} does not exist; create it or pick another "
                                 "path", code="bad_plot_path")
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for ax, (keys, label) in zip(axes.flat, PANELS):
        for key in (keys if isinstance(keys, tuple) else (keys,)):
            for split, style in (("train", "-"), ("eval", "o--")):
                steps, vals = hist.series(key, split)
                if steps:
                    ax.plot(steps, vals, style, lw=1, ms=3, label=f"{split} {key}")
        for f in report["findings"]:
            if f["steps"] and f["id"] != "too_few_points":
                lo, hi = f["steps"]
                ax.axvspan(lo, hi if hi > lo else lo + 0.5, color=COLOURS[f["severity"]], alpha=0.12)
        ax.set_ylabel(label)
        if ax.lines:
            ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("step")
    ids = ", ".join(f"{f['id']} ({f['severity']})" for f in report["findings"]) or "no findings"
    fig.suptitle(f"{report['method'].upper()} run, {report['steps']} steps: {ids}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=90, format="png")
    plt.close(fig)
    return out if isinstance(out, Path) else None
