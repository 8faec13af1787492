"""``validation.png``: one page a reviewer can read (matplotlib, Agg; needs ``edgereg[lab]``).

Four panels and a table: readings against reference with the fitted line and the identity;
residuals against reference; CV and bias per level with the acceptance limits; the blank and
low-level readings with LoB, LoD and LOQ marked. The table lists the figures and their formulas.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgereg.errors import require_extra


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def plot_validation(path: str | Path, name: str, unit: str, reference: np.ndarray, readings: np.ndarray,
                    figures: dict, *, title: str) -> Path:
    """Draw the page for one target.

    Args:
        path: the PNG to write.
        name, unit: the target and its unit ("" when unitless).
        reference, readings: (N,) the standards' reference values and the model's readings.
        figures: ``edgereg.lab.fit.validation.validate`` output.
        title: first line of the page (model, standards, date).
    """
    matplotlib = require_extra("matplotlib", "lab")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    u = f" [{unit}]" if unit else ""
    line, limits, repeat = figures["linearity"], figures["limits"], figures["repeatability"]
    figure = plt.figure(figsize=(8.27, 11.0))
    grid = figure.add_gridspec(3, 2, height_ratios=[1, 1, 0.9], hspace=0.38, wspace=0.3)
    figure.suptitle(title, fontsize=10)
    blank = reference == 0

    ax = figure.add_subplot(grid[0, 0])
    ax.scatter(reference, readings, s=14, alpha=0.75, label="standards")
    xs = np.linspace(float(reference.min()), float(reference.max()), 50)
    ax.plot(xs, line["intercept"] + line["slope"] * xs, color="C1", label="least squares")
    ax.plot(xs, xs, color="0.6", linestyle="--", linewidth=1, label="identity")
    ax.set(xlabel=f"reference {name}{u}", ylabel=f"reading{u}", title=f"Linearity: R² {line['r2']:.4f}")
    ax.legend(fontsize=7)

    ax = figure.add_subplot(grid[0, 1])
    ax.axhline(0, color="0.6", linewidth=1)
    ax.scatter(reference[~blank], line["residuals"], s=14, alpha=0.75)
    ax.set(xlabel=f"reference{u}", ylabel=f"residual{u}", title=f"Residuals: SD {line['residual_sd']:.3g}")

    ax = figure.add_subplot(grid[1, 0])
    levels = [lv for lv in repeat["levels"] if lv["reference"] != 0]
    refs = [lv["reference"] for lv in levels]
    cvs = [lv["cv_percent"] or 0.0 for lv in levels]
    bias = [100.0 * lv["bias"] / lv["reference"] for lv in levels]
    position = np.arange(len(levels))
    ax.bar(position - 0.2, cvs, width=0.4, label="CV %")
    ax.bar(position + 0.2, np.abs(bias), width=0.4, label="|bias| %")
    span = figures["working_range"]
    ax.axhline(span["max_cv_percent"], color="C3", linestyle=":", linewidth=1, label="acceptance")
    ax.set_xticks(position, [f"{r:.3g}" for r in refs], fontsize=7)
    ax.set(xlabel=f"level{u}", ylabel="%", title="Repeatability and bias per level")
    ax.legend(fontsize=7)

    ax = figure.add_subplot(grid[1, 1])
    nonblank = np.unique(reference[~blank])
    low = figures["ep17_lod"]["levels"] if figures["ep17_lod"] else nonblank[:1]
    shown = blank | np.isin(reference, low)
    ax.scatter(reference[shown], readings[shown], s=14, alpha=0.75)
    for key, colour in (("lob", "C2"), ("lod", "C1"), ("loq", "C3")):
        if limits[key] is not None:
            ax.axhline(limits[key], color=colour, linestyle="--", linewidth=1, label=f"{key.upper()} {limits[key]:.3g}")
    ax.set(xlabel=f"reference{u}", ylabel=f"reading{u}", title="Blanks and low levels")
    if any(limits[k] is not None for k in ("lob", "lod", "loq")):
        ax.legend(fontsize=7)

    ax = figure.add_subplot(grid[2, :])
    ax.axis("off")
    blank_figures, ich = figures["blank"], figures["ich"]
    rows = [
        ("slope S (95% CI)", f"{line['slope']:.4g} [{line['slope_ci95'][0]:.4g}, {line['slope_ci95'][1]:.4g}]",
         "least squares, reading on reference"),
        ("intercept (95% CI)", f"{line['intercept']:.4g} [{line['intercept_ci95'][0]:.4g}, "
                               f"{line['intercept_ci95'][1]:.4g}]", "t at n - 2 dof"),
        ("R², residual SD", f"{line['r2']:.5f}, {line['residual_sd']:.4g}", "s_y/x = sqrt(SSE / (n - 2))"),
        ("repeatability, pooled SD", _fmt(repeat["pooled_sd"]), f"{repeat['dof']} dof over replicate levels"),
        ("LoB", _fmt(limits["lob"]), "EP17: mean_blank + 1.645 SD_blank" +
         (f" (n {blank_figures['n']})" if blank_figures else ": no blanks")),
        ("LoD", _fmt(limits["lod"]), limits["lod_method"]),
        ("LOD / LOQ (ICH)", f"{ich['lod']:.4g} / {ich['loq']:.4g}", f"3.3 / 10 x sigma / S, sigma {ich['sigma']:.4g} "
                                                                    f"({ich['sigma_source']})"),
        ("working range", "none" if span["range"] is None else f"{span['range'][0]:.4g} .. {span['range'][1]:.4g}",
         f"CV <= {span['max_cv_percent']:g} %, |bias| <= {span['max_bias_percent']:g} %, >= LOQ"),
    ]
    table = ax.table(cellText=[list(r) for r in rows], colLabels=["figure", f"value{u}", "how"], loc="upper center",
                     cellLoc="left", colWidths=[0.25, 0.3, 0.45])
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1, 1.35)
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


__all__ = ["plot_validation"]
