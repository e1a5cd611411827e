"""The outputs of ``dadf-fast bench``: the printed table, the CSV and the PNG bar plot."""
from __future__ import annotations

import math
import os

from dadf_fast.cli.bench_tasks import COLUMNS, RUNTIME_VARIANTS, SPLIT
from dadf_fast.utils.io import atomic_open


def _fmt(v, spec):
    width = int(spec.split(".")[0] or 0)
    return "-".rjust(width) if isinstance(v, float) and math.isnan(v) else format(v, spec)


def print_header(print_fn=print) -> None:
    print_fn(f"{'preset':<7}{'batch':>6} {'task':<7}{'variant':<13}{'img/s':>9}{'ms/batch':>10}{'vs torch':>9}"
             f"{'backbone':>10}{'transf.':>9}{'flows':>9}{'scoring':>9}{'peak MB':>9}  note")


def print_row(r, print_fn=print) -> None:
    first = ("export+load" if r["variant"] in RUNTIME_VARIANTS else
             "capture" if r["variant"] == "auto-graph" else "compile")
    note = r["note"] or (f"{first} {r['compile_s']:.1f} s" if not math.isnan(r["compile_s"]) else "")
    print_fn(f"{r['preset']:<7}{r['batch']:>6} {r['task']:<7}{r['variant']:<13}{_fmt(r['images_per_s'], '9.2f')}"
             f"{_fmt(1e3 * r['seconds'], '10.1f')}{_fmt(r['ratio'], '8.2f')}x"
             f"{_fmt(r['backbone_ms'], '10.1f')}{_fmt(r['transformer_ms'], '9.1f')}"
             f"{_fmt(r['flows_ms'], '9.1f')}{_fmt(r['scoring_ms'], '9.1f')}{_fmt(r['peak_mb'], '9.0f')}  {note}")


def write_csv(rows, path) -> None:
    """The rows as a CSV table (columns :data:`COLUMNS`), written atomically."""
    import csv as _csv

    with atomic_open(path, "w") as f:
        w = _csv.DictWriter(f, fieldnames=list(COLUMNS))
        w.writeheader()
        w.writerows({k: r.get(k, "") for k in COLUMNS} for r in rows)


def write_plot(rows, path, title: str = "") -> None:
    """Bar plot: images/s per (preset, batch, task) and variant; inference stage split beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["preset"], r["batch"], r["task"]) for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    by = {(r["preset"], r["batch"], r["task"], r["variant"]): r for r in rows}
    infer = [r for r in rows if r["task"] == "infer" and not math.isnan(r["backbone_ms"])]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(groups) + 6), 4.8),
                             gridspec_kw={"width_ratios": [max(2, len(groups)), max(1, len(infer))]})
    ax = axes[0]
    width = 0.8 / max(1, len(variants))
    for j, v in enumerate(variants):
        vals = [by.get((*g, v), {}).get("images_per_s", float("nan")) for g in groups]
        xs = [i + (j - (len(variants) - 1) / 2) * width for i in range(len(groups))]
        bars = ax.bar(xs, [0 if math.isnan(y) else y for y in vals], width, label=v)
        for b, g in zip(bars, groups):
            r = by.get((*g, v))
            if r and not math.isnan(r["ratio"]) and v != "torch":
                ax.annotate(f"{r['ratio']:.2f}x", (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{p}\nb{b} {t}" for p, b, t in groups], fontsize=8)
    ax.set_ylabel("images / s")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("throughput (ratio vs torch)", fontsize=9)
    ax = axes[1]
    bottom = [0.0] * len(infer)
    for k in SPLIT:
        vals = [r[k] / r["batch"] for r in infer]
        ax.bar(range(len(infer)), vals, 0.6, bottom=bottom, label=k.replace("_ms", ""))
        bottom = [a + b for a, b in zip(bottom, vals)]
    ax.set_xticks(range(len(infer)))
    ax.set_xticklabels([f"{r['preset']} b{r['batch']}\n{r['variant']}" for r in infer], fontsize=8)
    ax.set_ylabel("inference ms / image")
    ax.legend(fontsize=8)
    ax.set_title("where inference time goes", fontsize=9)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"
    with atomic_open(path, "wb") as f:
        fig.savefig(f, dpi=110, format=fmt)
    plt.close(fig)
