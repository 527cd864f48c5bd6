"""Sweep plots from fit.json's numbers: ``scaling.png`` (loss against training FLOPs with the
fitted law), ``isoflop.png`` (approach 2) and ``envelope.png`` (approach 1); written
through cgpt.train.figures (Agg backend, atomic rename).
"""

from __future__ import annotations

import os

import numpy as np

from cgpt.train.figures import pyplot as _plt
from cgpt.train.figures import save_figure
from cgpt.train.fits.fit import paper_law


def _save(fig, path: str | os.PathLike) -> None:
    save_figure(fig, path, dpi=130)


def _plain_y(ax) -> None:
    # losses span less than a decade: plain numbers read better than 3×10⁰ on a log axis
    from matplotlib.ticker import FormatStrFormatter

    ax.yaxis.set_major_formatter(FormatStrFormatter("%.2f"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.2f"))


def _law_label(law: dict) -> str:
    return f"L(C) = (C / {law['a']:.3g})$^{{-{law['b']:.4f}}}$ + {law['c']:.3f}"


def _law_stats(law: dict) -> str:
    r2 = law.get("r2")
    return (
        f"R² = {r2:.4f}" if r2 is not None else "R² undefined"
    ) + f", RMSE = {law['rmse']:.4f} nats, {law['n_points']} points"


def _scatter_points(ax, points: list[dict], budgets: list, cmap) -> None:
    """Every finished point: coloured by budget, or labelled by name without budgets."""
    if budgets:
        for i, b in enumerate(budgets):
            pts = [p for p in points if p.get("budget") == b]
            ax.scatter(
                [p["flops"] for p in pts],
                [p["loss"] for p in pts],
                s=28,
                alpha=0.75,
                color=cmap(i / max(1, len(budgets) - 1)),
                label=f"budget {b:.2g} FLOPs",
            )
        return
    ax.scatter(
        [p["flops"] for p in points],
        [p["loss"] for p in points],
        s=40,
        color="tab:blue",
        zorder=3,
        label="sweep points (final val loss)",
    )
    for p in points:
        ax.annotate(
            p["name"],
            (p["flops"], p["loss"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=7,
            color="0.35",
        )


def _draw_law(ax, law: dict, budgets: list) -> None:
    """The frontier (per-budget optima, with budgets) and the fitted curve with its stats."""
    fr = law["frontier"]
    if budgets:
        ax.scatter(
            [f["flops"] for f in fr],
            [f["loss"] for f in fr],
            marker="*",
            s=160,
            color="tab:red",
            zorder=4,
            label="frontier: per-budget optimum",
        )
    xs = np.logspace(
        np.log10(min(f["flops"] for f in fr)) - 0.3,
        np.log10(max(f["flops"] for f in fr)) + 0.3,
        200,
    )
    ax.plot(
        xs,
        paper_law(xs, law["a"], law["b"], law["c"]),
        color="tab:red",
        lw=1.6,
        label=_law_label(law),
    )
    ax.plot([], [], " ", label=_law_stats(law))


def _draw_llo(ax, llo: dict) -> None:
    """The leave-largest-out prediction of the largest point, with its 95% interval."""
    pi = llo.get("pi95")
    yerr = [[llo["predicted"] - pi[0]], [pi[1] - llo["predicted"]]] if pi is not None else None
    ax.errorbar(
        [llo["flops"]],
        [llo["predicted"]],
        yerr=yerr,
        fmt="D",
        ms=6,
        color="tab:orange",
        capsize=4,
        zorder=5,
        label=(
            f"fit without the largest point predicts it: error "
            f"{100 * llo['rel_error']:+.2f}%" + (" (95% interval)" if pi is not None else "")
        ),
    )


def plot_scaling(points: list[dict], fit: dict, path: str | os.PathLike, title: str = "") -> None:
    """Final val loss against training FLOPs for every finished point; the frontier and the
    fitted curve L(C) = (C/a)^-b + c on log-log axes."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    budgets = sorted({p["budget"] for p in points if p.get("budget") is not None})
    _scatter_points(ax, points, budgets, plt.get_cmap("viridis"))
    law = fit.get("loss_law")
    if law:
        _draw_law(ax, law, budgets)
    llo = (fit.get("prediction") or {}).get("leave_largest_out")
    if llo:
        _draw_llo(ax, llo)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_y(ax)
    ax.set_xlabel("training compute C (FLOPs, algorithmic convention)")
    ax.set_ylabel("final validation loss (nats/token)")
    ax.set_title(title or "Compute-optimal scaling law")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    _save(fig, path)


def plot_isoflop(points: list[dict], fit: dict, path: str | os.PathLike, title: str = "") -> None:
    """Left: loss against params per budget with the fitted parabolas and optima. Right: the
    optimal params and tokens against compute with the fitted power laws."""
    iso = fit.get("isoflop") or {}
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5.2))
    cmap = plt.get_cmap("viridis")
    budgets = sorted({p["budget"] for p in points})
    fitted = {b["budget"]: b for b in iso.get("budgets", [])}
    for i, c in enumerate(budgets):
        col = cmap(i / max(1, len(budgets) - 1))
        pts = sorted((p for p in points if p["budget"] == c), key=lambda p: p["params"])
        ax.scatter(
            [p["params"] for p in pts],
            [p["loss"] for p in pts],
            color=col,
            label=f"C = {c:.2g} FLOPs",
        )
        if c in fitted:
            b = fitted[c]
            lx = np.linspace(
                np.log10(pts[0]["params"]) - 0.1, np.log10(pts[-1]["params"]) + 0.1, 100
            )
            ax.plot(10**lx, np.polyval(b["parabola"], lx), color=col, lw=1.2)
            ax.scatter(
                [b["n_opt"]], [b["loss_opt"]], marker="*", s=170, color=col, edgecolor="k", zorder=4
            )
    ax.set_xscale("log")
    ax.set_xlabel("parameters N (total)")
    ax.set_ylabel("final validation loss (nats/token)")
    ax.set_title("IsoFLOP curves (★ = fitted optimum)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if "alpha" in iso:
        cs = np.array([b["budget"] for b in iso["budgets"]])
        xs = np.logspace(np.log10(cs.min()) - 0.2, np.log10(cs.max()) + 0.2, 50)
        for key, law, sym, col in (
            ("n_opt", iso["n_opt_law"], "N", "tab:blue"),
            ("d_opt", iso["d_opt_law"], "D", "tab:orange"),
        ):
            ax2.scatter(cs, [b[key] for b in iso["budgets"]], color=col, zorder=3)
            ax2.plot(
                xs,
                law["coefficient"] * xs ** law["exponent"],
                color=col,
                label=f"${sym}_{{opt}}$ = {law['coefficient']:.3g}·$C^{{{law['exponent']:.3f}}}$",
            )
        ax2.plot(
            [],
            [],
            " ",
            label=f"tokens/param at optimum ≈ {iso['tokens_per_param']:.1f} "
            f"(range {iso['tokens_per_param_range'][0]:.1f}–"
            f"{iso['tokens_per_param_range'][1]:.1f}"
            + (
                f"; 95% CI {ci[0]:.1f}–{ci[1]:.1f})"
                if (ci := (iso.get("tokens_per_param_ci95") or {}).get("interval"))
                else ")"
            ),
        )
        ax2.legend(fontsize=8)
    else:
        ax2.text(
            0.5,
            0.5,
            iso.get("error", "no power-law fit"),
            ha="center",
            va="center",
            wrap=True,
            transform=ax2.transAxes,
            fontsize=9,
        )
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("training compute C (FLOPs, algorithmic convention)")
    ax2.set_ylabel("compute-optimal N (params) and D (tokens)")
    ax2.set_title("Compute-optimal allocation")
    ax2.grid(True, which="both", alpha=0.3)
    fig.suptitle(title or "IsoFLOP analysis (Chinchilla approach 2)")
    _save(fig, path)


def _envelope_curves(plt, fig, ax, a1: dict) -> None:
    """Left panel: every run's curve (or each size's completed runs), coloured by size on a
    log scale, and the envelope."""
    cmap = plt.get_cmap("viridis")
    sizes = sorted({r["params"] for r in a1["runs"]})
    lsz = np.log(sizes)
    span = max(float(lsz[-1] - lsz[0]), 1e-9)

    def color(n: float):
        return cmap(float(np.log(n) - lsz[0]) / span)

    for n in sizes:
        runs = [r for r in a1["runs"] if r["params"] == n]
        if a1["points"] == "curve":
            for r in runs:
                ax.plot(r["curve"]["flops"], r["curve"]["loss"], color=color(n), lw=1, alpha=0.8)
        else:
            runs.sort(key=lambda r: r["final_flops"])
            ax.plot(
                [r["final_flops"] for r in runs],
                [r["loss"] for r in runs],
                "o-",
                ms=3,
                color=color(n),
                lw=1,
            )
    env = a1["envelope"]
    ax.plot(
        [e["flops"] for e in env],
        [e["loss"] for e in env],
        color="tab:red",
        lw=2.2,
        label=f"envelope ({a1['envelope_sizes']} sizes on it)",
    )
    sm = plt.cm.ScalarMappable(
        cmap=cmap, norm=plt.matplotlib.colors.LogNorm(vmin=sizes[0], vmax=sizes[-1])
    )
    fig.colorbar(sm, ax=ax, label="parameters N (total)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_y(ax)
    ax.set_xlabel("training compute C (FLOPs, algorithmic convention)")
    ax.set_ylabel(a1["loss"])
    ax.set_title(f"curves ({a1['points']} points) and their envelope")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _envelope_laws(ax2, a1: dict) -> None:
    """Right panel: the envelope's N_opt and D_opt against compute with the fitted laws."""
    env = a1["envelope"]
    cs = np.array([e["flops"] for e in env])
    xs = np.logspace(np.log10(cs.min()), np.log10(cs.max()), 50)
    for key, law, sym, exp_key, col in (
        ("params", a1["n_opt_law"], "N", "a", "tab:blue"),
        ("tokens", a1["d_opt_law"], "D", "b", "tab:orange"),
    ):
        ci = a1.get(f"{exp_key}_ci95")
        ax2.scatter(cs, [e[key] for e in env], s=6, color=col, zorder=3)
        ax2.plot(
            xs,
            law["coefficient"] * xs ** law["exponent"],
            color=col,
            label=f"${sym}_{{opt}}$ ∝ $C^{{{law['exponent']:.3f}}}$"
            + (f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})" if ci else ""),
        )
    t = a1["tokens_per_param_at"]
    ax2.plot(
        [],
        [],
        " ",
        label=f"tokens/param at C = {t['flops']:.2g}: {t['tokens_per_param']:.1f}"
        + (f" (95% CI {t['ci95'][0]:.1f}–{t['ci95'][1]:.1f})" if t["ci95"] else ""),
    )
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("training compute C (FLOPs, algorithmic convention)")
    ax2.set_ylabel("envelope's N (params) and D (tokens)")
    ax2.set_title("compute-optimal allocation (approach 1)")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=8)


def plot_envelope(fit: dict, path: str | os.PathLike, title: str = "") -> None:
    """Chinchilla approach 1 from fit.json's ``approach1``. Left: every run's curve
    (smoothed training loss; or, with final points, each size's completed runs) against
    compute, and the envelope. Right: the envelope's N_opt and D_opt with the fitted laws."""
    a1 = fit["approach1"]
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5.2))
    _envelope_curves(plt, fig, ax, a1)
    _envelope_laws(ax2, a1)
    fig.suptitle(title or "Training-curve envelope (Chinchilla approach 1)")
    _save(fig, path)
