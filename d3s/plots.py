"""The benchmark's plots: PNG through matplotlib (Agg, no pyplot state) and data the app plots interactively.

- :func:`drop_bar`: drop in top-1 from ImageNet to D3S per model, coloured by family, hatched for
  models trained on more than ImageNet-1k (paper figures 4 and 9);
- :func:`accuracy_scatter`: D3S top-1 against ImageNet top-1, ``y = x`` dashed and the line of best
  fit computed without the CLIP models (figure 10);
- :func:`background_heatmap`: D3S top-1 per background (rows) and model (columns);
- :func:`bgchallenge_bars`: IN-9 accuracy per Backgrounds Challenge variation and model (`d3s bgchallenge`).
- :func:`counterfactual_plot` (paired data only): consistency and all-backgrounds accuracy per model,
  beside the flip rate per background and model.

Each function returns ``{"path", "title", ...}``; the title is also stored in the PNG's ``Title``
text chunk, so what a file shows can be checked without looking at it. :func:`draw_all` draws the
three and writes ``plots.json`` with the same data as records (for ``gr.BarPlot`` /
``gr.ScatterPlot`` in the app).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DROP_TITLE = "Drop in top-1 accuracy from ImageNet to D3S"
SCATTER_TITLE = "Top-1 on D3S vs ImageNet (best fit excludes CLIP)"
HEATMAP_TITLE = "D3S top-1 accuracy per background and model"
BGCHALLENGE_TITLE = "Backgrounds Challenge: IN-9 accuracy per variation"
COUNTERFACTUAL_TITLE = "Same object on every background: consistency and flip rates"
PLOTS_JSON = "plots.json"
FILES = {"drop": "accuracy_drop.png", "scatter": "d3s_vs_imagenet.png", "heatmap": "background_heatmap.png",
         "counterfactual": "counterfactual.png"}

_FAMILY_COLOURS = {
    "supervised CNN": "#4c72b0", "transformer": "#dd8452", "adversarially trained": "#c44e52",
    "semi-supervised": "#55a868", "semi-weakly supervised": "#8172b3", "self-supervised fine-tuned": "#937860",
    "CLIP zero-shot": "#da8bc3", "d3s extractor (fg head)": "#17becf",
}


def _colour(family: str) -> str:
    return _FAMILY_COLOURS.get(family, "#8c8c8c")


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path, title: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Title": title, "Software": "d3s"}, bbox_inches="tight")


def _legend_families(ax, families) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(color=_colour(f), label=f) for f in dict.fromkeys(families)]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="more data than ImageNet-1k"))
    ax.legend(handles=handles, fontsize=7, loc="best")


def drop_bar(rows: list[dict], path: str | Path) -> dict:
    """Bar per model: ImageNet top-1 minus D3S top-1, in points, largest drop first."""
    rows = sorted((r for r in rows if r.get("drop_top1") is not None), key=lambda r: -r["drop_top1"])
    fig = _figure(max(5.0, 0.45 * len(rows) + 2), 4.5)
    ax = fig.add_subplot()
    drops = [100 * r["drop_top1"] for r in rows]
    bars = ax.bar(range(len(rows)), drops, color=[_colour(r["family"]) for r in rows], edgecolor="black", linewidth=0.5)
    for bar, r in zip(bars, rows):
        if r["extra_data"]:
            bar.set_hatch("//")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(rows)), [r["model"] for r in rows], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("top-1 on ImageNet − top-1 on D3S (points)")
    ax.set_title(DROP_TITLE)
    _legend_families(ax, [r["family"] for r in rows])
    _save(fig, Path(path), DROP_TITLE)
    return {"path": str(path), "title": DROP_TITLE, "models": [r["model"] for r in rows], "drop_points": drops}


def best_fit(rows: list[dict]) -> dict | None:
    """Least-squares line of D3S top-1 on ImageNet top-1 over the non-CLIP models (None if < 2 distinct x)."""
    pts = [(r["imagenet_top1"], r["d3s_top1"]) for r in rows if r.get("imagenet_top1") is not None and r["kind"] != "clip"]
    if len({x for x, _ in pts}) < 2:
        return None
    slope, intercept = np.polyfit([x for x, _ in pts], [y for _, y in pts], 1)
    return {"slope": float(slope), "intercept": float(intercept), "models": len(pts)}


def accuracy_scatter(rows: list[dict], path: str | Path) -> dict:
    rows = [r for r in rows if r.get("imagenet_top1") is not None]
    fig = _figure(6, 5)
    ax = fig.add_subplot()
    for r in rows:
        x, y = 100 * r["imagenet_top1"], 100 * r["d3s_top1"]
        ax.scatter([x], [y], color=_colour(r["family"]), marker="*" if r["kind"] == "clip" else "o", s=60,
                   edgecolor="black", linewidth=0.5, label=r["family"])
        ax.annotate(r["model"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    xs = [100 * r["imagenet_top1"] for r in rows] + [100 * r["d3s_top1"] for r in rows]
    lo, hi = (min(xs), max(xs)) if xs else (0, 100)
    pad = max(1.0, 0.1 * (hi - lo))
    lo, hi = max(0.0, lo - pad), min(100.0, hi + pad)
    ax.plot([lo, hi], [lo, hi], "k--", linewidth=0.8, label="y = x")
    fit = best_fit(rows)
    if fit:
        grid = np.linspace(lo, hi, 2)
        ax.plot(grid, fit["slope"] * grid + 100 * fit["intercept"], color="#333333", linewidth=1.2,
                label=f"best fit without CLIP (slope {fit['slope']:.2f})")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="best")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("ImageNet top-1 (%)")
    ax.set_ylabel("D3S top-1 (%)")
    ax.set_title(SCATTER_TITLE)
    _save(fig, Path(path), SCATTER_TITLE)
    return {"path": str(path), "title": SCATTER_TITLE, "fit": fit, "models": [r["model"] for r in rows]}


def _grid(rows: list[dict], backgrounds: list[str], key: str) -> np.ndarray:
    """``rows[j][key][background]`` in percent, backgrounds x models (NaN where missing)."""
    grid = np.full((len(backgrounds), len(rows)), np.nan)
    for j, r in enumerate(rows):
        for i, b in enumerate(backgrounds):
            if b in r[key]:
                grid[i, j] = 100 * r[key][b]
    return grid


def _draw_grid(ax, grid: np.ndarray, models: list[str], backgrounds: list[str], cmap: str, light_below: bool):
    """A backgrounds x models heatmap with each value written in (white on the dark end of ``cmap``)."""
    im = ax.imshow(grid, cmap=cmap, vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(models)), models, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(backgrounds)), backgrounds, fontsize=8)
    for i in range(len(backgrounds)):
        for j in range(len(models)):
            if not np.isnan(grid[i, j]):
                dark = grid[i, j] < 50 if light_below else grid[i, j] >= 50
                ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=7, color="white" if dark else "black")
    return im


def _values(grid: np.ndarray) -> list[list[float | None]]:
    return [[None if np.isnan(v) else float(v) for v in row] for row in grid]


def background_heatmap(rows: list[dict], backgrounds: list[str], path: str | Path) -> dict:
    """Rows: backgrounds; columns: models; cells: D3S top-1 (%) with the value written in."""
    models = [r["model"] for r in rows]
    grid = _grid(rows, backgrounds, "per_background")
    fig = _figure(max(5.0, 0.9 * len(models) + 3), 0.4 * len(backgrounds) + 2.5)
    ax = fig.add_subplot()
    im = _draw_grid(ax, grid, models, backgrounds, "viridis", light_below=True)
    fig.colorbar(im, ax=ax, label="top-1 (%)")
    ax.set_title(HEATMAP_TITLE)
    _save(fig, Path(path), HEATMAP_TITLE)
    return {"path": str(path), "title": HEATMAP_TITLE, "models": models, "backgrounds": backgrounds, "values": _values(grid)}


def counterfactual_plot(rows: list[dict], backgrounds: list[str], path: str | Path) -> dict:
    """Left: consistency and all-backgrounds top-1 per model (with plain top-1 for scale); right: the flip
    rate (%) of each background and model. ``rows`` are summary rows with counterfactual scores."""
    rows = [r for r in rows if "consistency" in r]
    models = [r["model"] for r in rows]
    grid = _grid(rows, backgrounds, "flip_rate")
    fig = _figure(max(9.0, 1.4 * len(models) + 6), 0.4 * len(backgrounds) + 3)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, max(1.0, 0.3 * len(models))],
                                                        "wspace": 0.45})  # room for the background names
    series = [("consistency", "consistent on every background", "#4c72b0"),
              ("all_backgrounds_top1", "correct on every background", "#55a868"), ("d3s_top1", "top-1 (any image)", "#c8c8c8")]
    width = 0.8 / len(series)
    for k, (key, label, colour) in enumerate(series):
        left.barh(np.arange(len(models)) + (k - 1) * width, [100 * r[key] for r in rows], height=width, color=colour,
                  edgecolor="black", linewidth=0.5, label=label)
    left.set_yticks(range(len(models)), models, fontsize=8)
    left.invert_yaxis()
    left.set_xlim(0, 100)
    left.set_xlabel("% of groups (top-1: of images)")
    left.legend(fontsize=7, loc="lower right")
    im = _draw_grid(right, grid, models, backgrounds, "Reds", light_below=False)
    fig.colorbar(im, ax=right, label="flip rate (%): top-1 differs from the group's majority")
    fig.suptitle(COUNTERFACTUAL_TITLE)
    _save(fig, Path(path), COUNTERFACTUAL_TITLE)
    return {"path": str(path), "title": COUNTERFACTUAL_TITLE, "models": models, "backgrounds": backgrounds,
            "consistency": [r["consistency"] for r in rows], "all_backgrounds_top1": [r["all_backgrounds_top1"] for r in rows],
            "flip_rates": _values(grid)}


def bgchallenge_bars(rows: list[dict], path: str | Path, titles: dict[str, str]) -> dict:
    """Grouped bars: for each column of ``titles`` (key: the rows' field, value: its axis label; the challenge's
    variations and the adversarial backgrounds) one bar per model, IN-9 accuracy (%)."""
    columns = list(titles)
    width = 0.8 / max(1, len(rows))
    fig = _figure(max(7.0, 1.0 * len(columns) + 0.2 * len(rows) * len(columns)), 4.5)
    ax = fig.add_subplot()
    values = [[None if r[c] is None else 100 * r[c] for c in columns] for r in rows]
    for j, (r, vals) in enumerate(zip(rows, values)):
        xs = [i + (j - (len(rows) - 1) / 2) * width for i in range(len(columns))]
        ax.bar(xs, [np.nan if v is None else v for v in vals], width, color=f"C{j % 10}", edgecolor="black", linewidth=0.5,
               label=r["model"])
    ax.set_xticks(range(len(columns)), [titles[c] for c in columns], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("IN-9 accuracy (%)")
    ax.set_title(BGCHALLENGE_TITLE)
    ax.legend(fontsize=7, loc="best")
    _save(fig, Path(path), BGCHALLENGE_TITLE)
    return {"path": str(path), "title": BGCHALLENGE_TITLE, "models": [r["model"] for r in rows], "columns": columns,
            "values": values}


def draw_all(out: str | Path, summary: dict) -> dict:
    """Draw the three plots into ``out`` and write ``plots.json``; plots that need ImageNet are skipped without it."""
    out = Path(out)
    rows = summary["models"]
    drawn: dict = {}
    with_ref = [r for r in rows if r.get("imagenet_top1") is not None]
    if with_ref:
        drawn["drop"] = drop_bar(rows, out / FILES["drop"])
        drawn["scatter"] = accuracy_scatter(rows, out / FILES["scatter"])
    else:
        drawn["skipped"] = "accuracy drop and D3S-vs-ImageNet plots need --imagenet-val"
    drawn["heatmap"] = background_heatmap(rows, summary["backgrounds"], out / FILES["heatmap"])
    paired = [r for r in rows if "consistency" in r]
    if paired:
        drawn["counterfactual"] = counterfactual_plot(paired, summary["backgrounds"], out / FILES["counterfactual"])
    records = {
        "titles": {k: v["title"] for k, v in drawn.items() if isinstance(v, dict)},
        "models": [{k: r[k] for k in ("model", "family", "kind", "extra_data", "d3s_top1", "d3s_top5", "imagenet_top1",
                                      "imagenet_top5", "drop_top1", "worst_background")} for r in rows],
        "per_background": [{"model": r["model"], "background": b, "top1": v} for r in rows for b, v in r["per_background"].items()],
        "fit": drawn.get("scatter", {}).get("fit"),
        "counterfactual": [{k: r[k] for k in ("model", "consistency", "all_backgrounds_top1", "d3s_top1", "groups",
                                              "most_flips_background")} for r in paired],
        "flip_rates": [{"model": r["model"], "background": b, "flip_rate": v} for r in paired for b, v in r["flip_rate"].items()],
    }
    (out / PLOTS_JSON).write_text(json.dumps(records, indent=1))
    return drawn


def interactive_tables(out: str | Path) -> dict:
    """The plot data of a results folder as pandas tables, for the app's interactive plots.

    Returns ``{"models": DataFrame (one row per model, accuracies in %; with ``consistency`` and
    ``all_backgrounds_top1`` in % on paired data), "per_background": DataFrame (model, background, top1 %),
    "flip_rates": DataFrame (model, background, flip_rate %; empty unless paired), "titles": {...}, "heatmap":
    path or None}``. Raises ``FileNotFoundError`` when ``out`` holds no benchmark results.
    """
    import pandas as pd

    out = Path(out)
    path = out / PLOTS_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{out} holds no benchmark results ({PLOTS_JSON} missing); run `d3s benchmark --out {out}` first.")
    data = json.loads(path.read_text())
    models = pd.DataFrame(data["models"])
    for col in ("d3s_top1", "d3s_top5", "imagenet_top1", "imagenet_top5", "drop_top1"):
        models[col] = pd.to_numeric(models[col], errors="coerce") * 100
    per_bg = pd.DataFrame(data["per_background"])
    if len(per_bg):
        per_bg["top1"] = per_bg["top1"] * 100
    cf = {r["model"]: r for r in data.get("counterfactual", [])}
    if cf:
        for col in ("consistency", "all_backgrounds_top1"):
            models[col] = [100 * cf[m][col] if m in cf else np.nan for m in models["model"]]
    flip_rates = pd.DataFrame(data.get("flip_rates", []), columns=["model", "background", "flip_rate"])
    flip_rates["flip_rate"] = flip_rates["flip_rate"] * 100
    heatmap = out / FILES["heatmap"]
    return {"models": models, "per_background": per_bg, "flip_rates": flip_rates, "titles": data["titles"],
            "heatmap": str(heatmap) if heatmap.is_file() else None}
