"""Render every benchmark result (bench/results/*.json) as docs/BENCHMARKS.md with plots.

usage: report.py [--results bench/results] [--out docs/BENCHMARKS.md]
                 [--img-dir docs/benchmarks]

One section per JSON: what the benchmark measures, the command that writes it, the machine facts
the JSON records, a table of its key figures, the goal where a document states one, and plots
(PNG, under IMG_DIR, which this script owns: PNGs there that this run did not write are
removed). A known benchmark whose JSON is missing is shown as not run yet; a JSON the script
does not know gets a generic table; keys it does not know are listed, not dropped. Malformed
JSON, or a known key of the wrong type, stops the script with the file and key at fault.

Every figure on the page is read from the JSON files (three significant digits, whole numbers
from 1,000 up), except the goals, which are quoted from the document named beside each. The page holds no
timestamps and the PNGs no software version, so reruns on the same results diff cleanly.
"""

import argparse
import json
import math
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# The quality page's number format, method order and colours, so both pages read alike.
import report_quality  # noqa: E402
from report_quality import METHODS, SPLIT_TITLES, SPLITS, method_colors, ordered  # noqa: E402
from report_quality import table as quality_table  # noqa: E402

DPI = 110
PNG_METADATA = {"Software": None}  # no version in the file: same results, same bytes
BAR = "#4c72b0"
PEER = "#dd8452"
PEAK = "0.55"
GOAL_COLOR = "crimson"


class ReportError(Exception):
    pass


class Context:
    """Where a section reads and writes, and the results directory as the page links it."""

    def __init__(self, results_dir, img_dir, rel_results):
        self.results_dir, self.img_dir, self.rel_results = results_dir, img_dir, rel_results


# --- reading the JSON -----------------------------------------------------------------------


def load(path):
    """The JSON object in `path`, or None when the file does not exist."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})")
    if not isinstance(doc, dict):
        raise ReportError(f"{path}: expected a JSON object at the top level, "
                          f"found {kind_of(doc)}")
    return doc


def kind_of(value):
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Fields:
    """Typed access to a JSON object, remembering which top-level keys were read."""

    def __init__(self, path, doc, prefix=""):
        self.path, self.doc, self.prefix = path, doc, prefix
        self.used = set()

    def _get(self, key):
        self.used.add(key)
        return self.doc.get(key)

    def _bad(self, key, want, value):
        return ReportError(f"{self.path}: `{self.prefix}{key}` should be {want}, "
                           f"found {kind_of(value)}")

    def num(self, key):
        value = self._get(key)
        if value is None or is_number(value):
            return value
        raise self._bad(key, "a number", value)

    def text(self, key):
        value = self._get(key)
        if value is None or isinstance(value, str):
            return value
        raise self._bad(key, "a string", value)

    def flag(self, key):
        value = self._get(key)
        if value is None or isinstance(value, bool):
            return value
        raise self._bad(key, "true or false", value)

    def nums(self, key):
        value = self._get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(is_number(v) for v in value):
            raise self._bad(key, "a list of numbers", value)
        return value

    def obj(self, key):
        """The object under `key` as Fields (empty when absent)."""
        value = self._get(key)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self._bad(key, "an object", value)
        return Fields(self.path, value, f"{self.prefix}{key}.")

    def keys(self):
        return list(self.doc)

    def unused(self):
        return [k for k in self.doc if k not in self.used]


# --- Markdown helpers -----------------------------------------------------------------------


def fmt(x):
    """The quality page's format (3 significant digits), with thousands separated in integers
    too."""
    if is_number(x) and isinstance(x, int) and abs(x) >= 1000:
        return f"{x:,}"
    return report_quality.fmt(x)


def figures_table(rows):
    """rows: (figure, value, JSON key); rows whose value is None are left out."""
    lines = ["| figure | value | JSON key |", "|---|---:|---|"]
    lines += [f"| {name} | {fmt(value)} | `{key}` |" for name, value, key in rows
              if value is not None]
    return lines if len(lines) > 2 else []


def fmt_list(values):
    return ", ".join(fmt(v) for v in values)


def machine_lines(facts):
    """facts: (label, value); the ones the JSON has, or a sentence saying there are none."""
    present = [(label, value) for label, value in facts if value is not None]
    if not present:
        return ["**Machine:** the JSON records none."]
    shown = "; ".join(f"{label} {value if isinstance(value, str) else fmt(value)}"
                      for label, value in present)
    return [f"**Machine (as recorded):** {shown}."]


def goal_lines(goals):
    """goals: (text, source, value, threshold, direction) or (text, source) for a goal with no
    number to check."""
    if not goals:
        return ["**Goal:** none stated in the JSON or the docs."]
    lines = ["**Goal:**", ""]
    for goal in goals:
        if len(goal) == 2:
            text, source = goal
            lines.append(f"- {text} ({source}).")
            continue
        text, source, value, threshold, direction = goal
        if value is None:
            verdict = "not recorded in the JSON"
        else:
            met = {">=": value >= threshold, ">": value > threshold, "<=": value <= threshold,
                   "<": value < threshold, "==": value == threshold}[direction]
            verdict = f"measured {fmt(value)} — {'met' if met else 'not met'}"
        lines.append(f"- {text}, per {source}: {verdict}.")
    return lines


def extra_lines(fields):
    """The top-level keys no section read, so that nothing in the JSON goes unseen."""
    rest = fields.unused()
    if not rest:
        return []
    parts = []
    for key in rest:
        value = fields.doc[key]
        if isinstance(value, (dict, list)):
            parts.append(f"`{key}` ({kind_of(value)})")
        elif isinstance(value, str):
            parts.append(f"`{key}` = {value}")
        else:
            parts.append(f"`{key}` = {fmt(value)}")
    return ["", "Also in the JSON: " + "; ".join(parts) + "."]


# --- plots ----------------------------------------------------------------------------------


def save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, metadata=PNG_METADATA)
    plt.close(fig)


def label_bars(ax, xs, values, missing=None, size=8):
    """Each bar's value above it (below it when negative); `missing` where there is none."""
    for x, v in zip(xs, values):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            if missing:
                ax.text(x, 0.02, missing, transform=ax.get_xaxis_transform(), ha="center",
                        va="bottom", fontsize=8, color="0.4")
            continue
        below = v < 0
        ax.annotate(fmt(v), (x, v), xytext=(0, -3 if below else 3), textcoords="offset points",
                    ha="center", va="top" if below else "bottom", fontsize=size)


def bars(ax, names, values, colors=None, log=False):
    """Bars for the values that exist; a missing value leaves its slot empty."""
    xs = np.arange(len(names))
    heights = [np.nan if v is None else v for v in values]
    ax.bar(xs, heights, color=colors or BAR)
    ax.set_xticks(xs, names)
    ax.set_xlim(-0.6, len(names) - 0.4)
    if log:
        ax.set_yscale("log")
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3)
    label_bars(ax, xs, values, missing="not recorded")
    return xs


# --- the benchmarks -------------------------------------------------------------------------


def ensemble_section(f, ctx):
    workload = f.text("workload")
    setup = [
        ("members", f.num("members"), "{} members"),
        ("group_size", f.num("group_size"), "trained in groups of {}"),
        ("epochs", f.num("epochs"), "{} epochs"),
        ("parameters_per_member", f.num("parameters_per_member"), "{} parameters per member"),
        ("single_members_timed", f.num("single_members_timed"),
         "{} members timed one at a time with the engine"),
        ("pytorch_members_timed", f.num("pytorch_members_timed"),
         "{} with the PyTorch loop"),
    ]
    text = [
        "Training throughput of subset retrains, DMM's expensive stage: small models on random "
        "α-subsets of the training set trained as one member-batched network, against the same "
        "members trained one at a time by the engine and by a plain one-model-at-a-time PyTorch "
        "loop (`bench/peers/`), all in one run. The ensemble's GFLOP/s count 6 × parameters "
        "per training example; the peak is the rate of a 4096 × 4096 float32 matrix product "
        "on the same machine, probed before, between and after four slices of the ensemble "
        "(each slice held to the faster of its two neighbouring probes, each probe the best "
        "of four products), because a shared machine's speed drifts during a run.",
        "",
        setup_line(workload, setup),
        "",
    ]
    text += machine_lines([("device", f.text("device")), ("libtorch threads", f.num("threads")),
                           ("sgemm GFLOP/s", f.num("sgemm_gflops"))])
    rows = [
        ("training examples/s, ensemble", f.num("ensemble_examples_per_s"),
         "ensemble_examples_per_s"),
        ("training examples/s, engine one member at a time", f.num("single_examples_per_s"),
         "single_examples_per_s"),
        ("training examples/s, PyTorch one model at a time", f.num("pytorch_examples_per_s"),
         "pytorch_examples_per_s"),
        ("ensemble / engine one at a time", f.num("ratio_vs_single"), "ratio_vs_single"),
        ("ensemble / PyTorch", f.num("ratio_vs_pytorch"), "ratio_vs_pytorch"),
        ("ensemble GFLOP/s", f.num("ensemble_gflops"), "ensemble_gflops"),
        ("sgemm GFLOP/s (peak)", f.num("sgemm_gflops"), "sgemm_gflops"),
        ("fraction of peak", f.num("fraction_of_peak"), "fraction_of_peak"),
        ("ensemble wall time, s", f.num("ensemble_seconds"), "ensemble_seconds"),
        ("mean validation accuracy, ensemble members", f.num("val_acc_mean"), "val_acc_mean"),
        ("lowest validation accuracy, ensemble members", f.num("val_acc_min"), "val_acc_min"),
        ("mean validation accuracy, PyTorch members", f.num("pytorch_val_acc_mean"),
         "pytorch_val_acc_mean"),
    ]
    goals = [("no number is set: small models are trained many at once in one batched "
              "network, and one model at a time is the slow baseline", "DESIGN.md §1.1"),
             ("the ensemble faster than the engine one member at a time (`ratio_vs_single` "
              "above 1)", "DESIGN.md §1.1", f.num("ratio_vs_single"), 1, ">"),
             ("the ensemble faster than the PyTorch loop (`ratio_vs_pytorch` above 1)",
              "DESIGN.md §1.1", f.num("ratio_vs_pytorch"), 1, ">"),
             ("on 2 CPU cores, `fraction_of_peak` at least 0.75", "issue 2",
              f.num("fraction_of_peak"), 0.75, ">="),
             ("on 2 CPU cores, `ratio_vs_pytorch` at least 2", "issue 2",
              f.num("ratio_vs_pytorch"), 2, ">=")]
    # The convolutional workloads: the engine's ensemble (outputs on every target included)
    # against the better of PyTorch one model at a time and torch.func/vmap.
    for name in ("cnn", "resnet9"):
        w = f.obj(name)
        if not w.keys():
            continue
        layouts = w.obj("layouts")
        rows += [
            (f"{name}: examples/s, ensemble ({w.text('default_layout')} convolutions)",
             w.num("examples_per_s"), f"{name}.examples_per_s"),
            (f"{name}: examples/s, PyTorch loop", w.num("pytorch_loop_examples_per_s"),
             f"{name}.pytorch_loop_examples_per_s"),
            (f"{name}: examples/s, PyTorch vmap", w.num("pytorch_vmap_examples_per_s"),
             f"{name}.pytorch_vmap_examples_per_s"),
            (f"{name}: ensemble / better PyTorch ({w.text('pytorch_baseline')})",
             w.num("ratio_vs_pytorch"), f"{name}.ratio_vs_pytorch"),
            (f"{name}: training examples/s, per-member convolutions",
             layouts.obj("per_member").num("examples_per_s"),
             f"{name}.layouts.per_member.examples_per_s"),
            (f"{name}: training examples/s, grouped convolutions",
             layouts.obj("grouped").num("examples_per_s"),
             f"{name}.layouts.grouped.examples_per_s"),
            (f"{name}: mean validation accuracy, ensemble", w.num("val_acc_mean"),
             f"{name}.val_acc_mean"),
            (f"{name}: mean validation accuracy, PyTorch loop", w.num("pytorch_val_acc_mean"),
             f"{name}.pytorch_val_acc_mean"),
        ]
        for key in ("members", "epochs", "workload", "pytorch_examples_per_s",
                    "pytorch_vmap_val_acc_mean"):
            w.used.add(key)
        if name == "cnn":
            goals.append(("`cnn.ratio_vs_pytorch` at least 2 against the better PyTorch "
                          "baseline", "issue 19", w.num("ratio_vs_pytorch"), 2, ">="))
            accuracy, peer = w.num("val_acc_mean"), w.num("pytorch_val_acc_mean")
            goals.append(("`cnn.val_acc_mean` at least the PyTorch loop's − 0.01", "issue 19",
                          None if accuracy is None or peer is None else accuracy - peer,
                          -0.01, ">="))

    images = []
    rates = [f.num("ensemble_examples_per_s"), f.num("single_examples_per_s"),
             f.num("pytorch_examples_per_s")]
    gflops = [f.num("ensemble_gflops"), f.num("sgemm_gflops")]
    if any(v is not None for v in rates + gflops):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5),
                                       gridspec_kw={"width_ratios": [3, 2]})
        xs = bars(ax1, ["ensemble", "engine,\none at a time", "PyTorch,\none at a time"], rates,
                  colors=[BAR, PEER, PEER])
        ratios = [None, f.num("ratio_vs_single"), f.num("ratio_vs_pytorch")]
        for x, r, v in zip(xs, ratios, rates):
            if r is not None and v is not None:
                ax1.annotate(f"ensemble ×{fmt(r)}", (x, v), xytext=(0, 15),
                             textcoords="offset points", ha="center", fontsize=8, color="0.3")
        ax1.set_ylabel("training examples/s")
        ax1.set_title("Throughput")
        bars(ax2, ["ensemble", "sgemm peak"], gflops, colors=[BAR, PEAK])
        frac = f.num("fraction_of_peak")
        ax2.set_ylabel("GFLOP/s")
        ax2.set_title("Compute rate" + (f": {fmt(frac)} of peak" if frac is not None else ""))
        fig.suptitle(workload or "bench-ensemble", fontsize=10)
        save(fig, ctx.img_dir / "ensemble.png")
        images.append(("ensemble throughput and fraction of peak", "ensemble.png"))
    return text, figures_table(rows), goals, images


def attribution_section(f, ctx):
    lds = f.obj("lds")
    build = f.obj("build_seconds")
    featurize = f.obj("featurize_examples_per_s")
    setup = [
        ("estimation_models", f.num("estimation_models"), "{} subset models for estimation"),
        ("held_out_models", f.num("held_out_models"), "{} held out for the LDS"),
        ("lds_targets", f.text("lds_targets"), "LDS targets: {}"),
        ("trak_checkpoints", f.num("trak_checkpoints"), "TRAK on {} checkpoint(s)"),
        ("projection_dim", f.num("projection_dim"), "projection dimension {}"),
        ("trak_scale", f.num("trak_scale"), "TRAK's calibrated scale {}"),
    ]
    text = [
        "How well each attribution estimator predicts the outputs of models retrained on "
        "subsets (LDS: Spearman correlation between predicted and actual margins on held-out "
        "subset retrains, averaged over targets; higher is better), what each index costs to "
        "build, and Lethe's TRAK featurisation against the `traker` library on the very same "
        "checkpoint, projection dimension and examples (`docs/attribution.md`).",
        "",
        setup_line(f.text("workload"), setup),
        "",
    ]
    text += machine_lines([])
    known = ["subsample", "regression", "trak", "traker"]
    present = set(lds.keys()) | set(build.keys())
    estimators = [e for e in known if e in present] + sorted(present - set(known))
    est_rows = ["| estimator | LDS | build seconds |", "|---|---:|---:|"]
    lds_values, build_values = [], []
    for e in estimators:
        lds_values.append(lds.num(e))
        build_values.append(build.num(e))
        est_rows.append(f"| `{e}` | {fmt(lds_values[-1])} | {fmt(build_values[-1])} |")
    rows = [
        ("training examples featurised/s, Lethe's TRAK", featurize.num("lethe"),
         "featurize_examples_per_s.lethe"),
        ("training examples featurised/s, `traker`", featurize.num("traker"),
         "featurize_examples_per_s.traker"),
        ("Lethe / `traker`", f.num("ratio_vs_traker"), "ratio_vs_traker"),
        ("subsample index build, s", f.num("index_build_seconds"), "index_build_seconds"),
    ]
    table = (est_rows if estimators else []) + ([""] if estimators else []) + figures_table(rows)
    goals = [("LDS has no target number; estimators are compared with each other and with "
              "`traker`", "`docs/attribution.md`"),
             ("fmnist-bench index from M ≥ 2,000 subset models", "DESIGN.md §2",
              f.num("estimation_models"), 2000, ">=")]
    images = []
    if any(v is not None for v in lds_values + build_values) or featurize.keys():
        fig, axes = plt.subplots(1, 3, figsize=(14, 4.5))
        peer_colors = [PEER if e == "traker" else BAR for e in estimators]
        bars(axes[0], estimators, lds_values, colors=peer_colors)
        axes[0].set_ylabel("LDS (higher is better)")
        axes[0].set_title("Attribution quality")
        bars(axes[1], estimators, build_values, colors=peer_colors)
        axes[1].set_ylabel("seconds")
        axes[1].set_title("Index build time")
        names = list(featurize.keys())
        values = [featurize.num(k) for k in names]
        positive = [v for v in values if v]
        log = len(positive) >= 2 and max(positive) / min(positive) > 10
        bars(axes[2], names, values, colors=[BAR if n == "lethe" else PEER for n in names],
             log=log)
        axes[2].set_ylabel("training examples/s" + (" (log scale)" if log else ""))
        ratio = f.num("ratio_vs_traker")
        axes[2].set_title("TRAK featurisation" + (f" (×{fmt(ratio)})" if ratio else ""))
        fig.suptitle(f.text("workload") or "bench-attribution", fontsize=10)
        save(fig, ctx.img_dir / "attribution.png")
        images.append(("attribution LDS, build time and featurisation rate", "attribution.png"))
    return text, table, goals, images


def quality_section(f, ctx):
    forget_sets = f.obj("forget_sets")
    info = f.obj("forget_set_info")
    sets = {}
    for fs in forget_sets.keys():
        methods = forget_sets.obj(fs)
        sets[fs] = {m: methods.obj(m) for m in methods.keys()
                    if isinstance(methods.doc[m], dict)}
    # check the figures the page and plots use; the rest is passed through as it is
    for fs, methods in sets.items():
        for m, r in methods.items():
            for key in [f"{s}_{k}" for s in SPLITS for k in ("p95", "p99", "accuracy")] + [
                    "gap_closure", "cost_vs_retrain"]:
                r.num(key)
            r.nums("gap_closure_by_seed")

    text = [
        "How close each unlearning method gets to retraining without the forget set: KLoM "
        "(DESIGN.md §1.7) per point of the forget, retain and validation splits, "
        "N unlearned models against N′ oracles retrained without the forget set; lower is "
        "better. The noise floor is held-out oracles scored the same way (what retraining "
        "itself achieves), do-nothing the originals. Gap closure = (do-nothing forget P95 − "
        "method forget P95) / (do-nothing forget P95 − noise-floor forget P95). Also the cost "
        "of one DMM request against one retrain, both timed in the same run "
        "(`docs/unlearning.md`).",
        "",
        setup_line(", ".join(template.format(value) for template, value in
                             (("`{}`", f.text("workload")), ("model `{}`", f.text("model")))
                             if value), [
            ("n", f.num("n"), "N = {} models unlearned per method"),
            ("n_oracles", f.num("n_oracles"), "N′ = {} oracles"),
            ("held_out_oracles", f.num("held_out_oracles"),
             "{} held-out oracles for the noise floor"),
            ("estimation_models", f.num("estimation_models"),
             "an index from {} subset models"),
            ("estimator", f.text("estimator"), "estimator `{}`"),
            ("retrain_examples_per_model", f.num("retrain_examples_per_model"),
             "{} example passes per retrained model"),
        ]),
        "",
    ]
    text += machine_lines([])
    table = []
    for fs, methods in sets.items():
        fs_info = info.obj(fs)
        size, construction = fs_info.num("size"), fs_info.text("construction")
        head = f"Forget set `{fs}`"
        if size is not None:
            head += f", {fmt(size)} points"
        if construction:
            head += f": {construction}"
        table += [head + ".", ""] + quality_table({m: r.doc for m, r in methods.items()}) + [""]
    cost_rows = [
        ("DMM seconds per request", f.num("dmm_seconds_per_request"), "dmm_seconds_per_request"),
        ("retrain seconds", f.num("retrain_seconds"), "retrain_seconds"),
        ("cost ratio (DMM request / retrain)", f.num("cost_ratio"), "cost_ratio"),
    ]
    table += figures_table(cost_rows)
    suite_rows = [
        ("worst DMM closure, reporting instances", f.num("suite_reporting_min_closure"),
         "suite_reporting_min_closure"),
        ("worst DMM closure − OM's, reporting instances",
         f.num("suite_reporting_min_closure_minus_om"), "suite_reporting_min_closure_minus_om"),
        ("worst retain P95 excess over doing nothing, reporting instances",
         f.num("suite_reporting_max_retain_excess"), "suite_reporting_max_retain_excess"),
        ("worst validation P95 excess over doing nothing, reporting instances",
         f.num("suite_reporting_max_val_excess"), "suite_reporting_max_val_excess"),
        ("Spearman of DMM's confidence with its closure, all instances",
         f.num("confidence_spearman"), "confidence_spearman"),
    ]
    if any(value is not None for _, value, _ in suite_rows):
        table += ["", "The forget-set suite (21 instances of seven families; per instance in "
                      "`quality.md`):", ""] + figures_table(suite_rows)
    if (ctx.results_dir / "quality.md").exists():
        page = f"{ctx.results_dir.as_posix()}/quality.md"
        table += ["", f"Per-point KLoM distributions, method settings and the DMM ablation: "
                      f"[`{page}`]({ctx.rel_results}/quality.md) (written by "
                      "`make bench-quality`)."]
        f.obj("dmm_ablation")  # shown there
        f.obj("dmm_config")
    goals = [("N ≥ 80 unlearned models for a reported figure", "DESIGN.md §1.7",
              f.num("n"), 80, ">="),
             ("N′ ≥ 80 oracles for a reported figure", "DESIGN.md §1.7",
              f.num("n_oracles"), 80, ">="),
             ("fmnist-bench index from M ≥ 2,000 subset models", "DESIGN.md §2",
              f.num("estimation_models"), 2000, ">="),
             ("DMM closure ≥ 0.8 on every reporting instance", "issue 18",
              f.num("suite_reporting_min_closure"), 0.8, ">="),
             ("DMM closure ≥ OM's − 0.1 on every reporting instance", "issue 18",
              f.num("suite_reporting_min_closure_minus_om"), -0.1, ">="),
             ("retain P95 within 0.1 of doing nothing on reporting instances", "issue 18",
              f.num("suite_reporting_max_retain_excess"), 0.1, "<="),
             ("validation P95 within 0.1 of doing nothing on reporting instances", "issue 18",
              f.num("suite_reporting_max_val_excess"), 0.1, "<="),
             ("`cost_ratio` ≤ 0.05", "issue 18", f.num("cost_ratio"), 0.05, "<=")]

    images = []
    if sets:
        plot_quality_p95(sets, ctx.img_dir / "quality-p95.png")
        images.append(("KLoM P95 per method and split, with the noise floor", "quality-p95.png"))
        plot_quality_closure(sets, f, ctx.img_dir / "quality-closure.png")
        images.append(("gap closure and cost per method", "quality-closure.png"))
    return text, table, goals, images


def plot_quality_p95(sets, path):
    splits = SPLITS
    fig, axes = plt.subplots(len(sets), len(splits), figsize=(14, 3.6 * len(sets)),
                             squeeze=False, sharey="row")
    for row, (fs, methods) in enumerate(sets.items()):
        names = [m for m in ordered(methods) if m != "noise_floor"]
        colors = method_colors(ordered(methods))
        for col, split in enumerate(splits):
            ax = axes[row][col]
            values = [methods[m].num(f"{split}_p95") for m in names]
            bars(ax, names, values, colors=[colors[m] for m in names])
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
            floor = methods["noise_floor"].num(f"{split}_p95") if "noise_floor" in methods else None
            if floor is not None:
                ax.axhline(floor, color="0.4", linestyle="--", linewidth=1,
                           label=f"noise floor {fmt(floor)}")
                ax.legend(loc="upper left", frameon=False, fontsize=8)
            ax.set_title(f"{fs}: {SPLIT_TITLES[split]} points")
            if col == 0:
                ax.set_ylabel("KLoM P95 (lower is better)")
    fig.suptitle("KLoM P95 per method and split (DMM and OM: mean over request seeds)",
                 fontsize=11)
    save(fig, path)


def plot_quality_closure(sets, f, path):
    names = [m for m in METHODS if m not in ("do_nothing", "noise_floor")
             and any(m in methods for methods in sets.values())]
    names += sorted({m for methods in sets.values() for m in methods} - set(METHODS))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 4.8))
    width = 0.8 / max(len(sets), 1)
    xs = np.arange(len(names))
    for k, (fs, methods) in enumerate(sets.items()):
        offset = (k - (len(sets) - 1) / 2) * width
        values, ranged = [], []
        for i, m in enumerate(names):
            r = methods.get(m)
            v = r.num("gap_closure") if r else None
            seeds = r.nums("gap_closure_by_seed") if r else []
            values.append(np.nan if v is None else v)
            if v is not None and len(seeds) > 1:
                ranged.append((xs[i] + offset, v, v - min(seeds), max(seeds) - v))
        ax1.bar(xs + offset, values, width, label=fs)
        if ranged:
            x, v, low, high = zip(*ranged)
            ax1.errorbar(x, v, yerr=[low, high], fmt="none", ecolor="black", capsize=3)
        label_bars(ax1, xs + offset, [None if np.isnan(v) else v for v in values], size=7)
    ax1.axhline(0, color="black", linewidth=0.8)
    ax1.axhline(1, color="0.4", linestyle="--", linewidth=1, label="noise floor (1)")
    ax1.set_xticks(xs, names)
    ax1.margins(y=0.1)
    ax1.set_ylabel("gap closure (1 = noise floor, 0 = do nothing)")
    ax1.set_title("Gap closure (bars: seed range where several seeds ran)")
    ax1.legend(frameon=False, fontsize=8)
    ax1.grid(axis="y", alpha=0.3)

    for k, (fs, methods) in enumerate(sets.items()):
        offset = (k - (len(sets) - 1) / 2) * width
        costs = [methods[m].num("cost_vs_retrain") if m in methods else None for m in names]
        heights = [np.nan if c is None or c <= 0 else c for c in costs]
        ax2.bar(xs + offset, heights, width, label=fs)
        label_bars(ax2, xs + offset, [None if np.isnan(h) else h for h in heights], size=7)
    ax2.set_yscale("log")
    ax2.axhline(1, color="black", linestyle=":", linewidth=1, label="one retrain")
    ax2.set_xticks(xs, names)
    ax2.set_ylabel("example passes / one retrain's (log scale)")
    ratio = f.num("cost_ratio")
    ax2.set_title("Compute cost vs retrain" +
                  (f" (DMM request, timed: {fmt(ratio)} of a retrain)" if ratio else ""))
    ax2.legend(frameon=False, fontsize=8)
    ax2.grid(axis="y", alpha=0.3)
    save(fig, path)


def coordinator_section(f, ctx):
    lethe_rounds = f.nums("lethe_tasks_per_s_by_round")
    raw_rounds = f.nums("raw_skip_locked_per_s_by_round")
    setup = [
        ("workers", f.num("workers"), "{} simulated workers"),
        ("tasks_per_phase", f.num("tasks_per_phase"), "{} no-op tasks per phase"),
        ("tasks_per_job", f.num("tasks_per_job"), "{} tasks per job"),
    ]
    text = [
        "Task throughput of the coordinator: simulated workers claim and complete no-op tasks "
        "through the gRPC worker API (AcquireTask, then CompleteTask with the next acquire), "
        "each on its own connection, while one client measures GetOperation latency. In "
        "alternate phases on fresh tasks, the same number of loops run only the bare `FOR "
        "UPDATE SKIP LOCKED` claim and the completion UPDATE in SQL through a pool of the same "
        "size: the floor the coordinator is measured against. `ratio` is Lethe over the raw "
        "loop; `store_tasks_per_s` is the store's calls without gRPC (`docs/service.md`).",
        "",
        setup_line(None, setup),
        "",
    ]
    durable = f.flag("postgres_durable")
    text += machine_lines([
        ("CPU cores", f.num("cpu_cores")),
        ("database pool", f.num("db_pool")),
        ("PostgreSQL", None if durable is None else ("with durable settings" if durable
                                                     else "with fsync and synchronous commit off")),
        ("note:", f.text("note")),
    ])
    rows = [
        ("tasks/s through Lethe (mean of rounds)", f.num("lethe_tasks_per_s"),
         "lethe_tasks_per_s"),
        ("tasks/s, raw SKIP LOCKED loop (mean of rounds)", f.num("raw_skip_locked_per_s"),
         "raw_skip_locked_per_s"),
        ("Lethe / raw", f.num("ratio"), "ratio"),
        ("tasks/s, store calls without gRPC", f.num("store_tasks_per_s"), "store_tasks_per_s"),
        ("GetOperation p50, ms", f.num("get_p50_ms"), "get_p50_ms"),
        ("GetOperation p99, ms", f.num("get_p99_ms"), "get_p99_ms"),
        ("GetOperation samples", f.num("get_samples"), "get_samples"),
    ]
    table = figures_table(rows)
    if lethe_rounds or raw_rounds:
        n = max(len(lethe_rounds), len(raw_rounds))
        table += ["", "| round | Lethe tasks/s | raw SKIP LOCKED tasks/s |", "|---:|---:|---:|"]
        for i in range(n):
            a = lethe_rounds[i] if i < len(lethe_rounds) else None
            b = raw_rounds[i] if i < len(raw_rounds) else None
            table.append(f"| {i + 1} | {fmt(a)} | {fmt(b)} |")
        table += ["", "(`lethe_tasks_per_s_by_round`, `raw_skip_locked_per_s_by_round`)"]
    goal_value = 2000
    goals = [("2,000 tasks/s through the coordinator", "issue 5",
              f.num("lethe_tasks_per_s"), goal_value, ">="),
             ("`ratio` at least 0.5", "issue 5", f.num("ratio"), 0.5, ">="),
             ("GetOperation p99 under 20 ms under that load", "issue 5",
              f.num("get_p99_ms"), 20, "<")]

    images = []
    if lethe_rounds or raw_rounds or f.num("get_p50_ms") is not None:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5),
                                       gridspec_kw={"width_ratios": [3, 2]})
        n = max(len(lethe_rounds), len(raw_rounds))
        xs = np.arange(n)
        width = 0.38
        for k, (name, values, color) in enumerate(
                [("Lethe (gRPC workers)", lethe_rounds, BAR),
                 ("raw SKIP LOCKED loop", raw_rounds, PEAK)]):
            values = list(values) + [np.nan] * (n - len(values))
            ax1.bar(xs + (k - 0.5) * width, values, width, label=name, color=color)
            label_bars(ax1, xs + (k - 0.5) * width,
                       [None if np.isnan(v) else v for v in values])
        ax1.axhline(goal_value, color=GOAL_COLOR, linestyle="--", linewidth=1,
                    label="goal 2,000 (docs/service.md)")
        ax1.set_xticks(xs, [f"round {i + 1}" for i in range(n)])
        ax1.set_ylabel("tasks/s")
        ax1.set_title("Task throughput by round")
        ax1.margins(y=0.15)
        ax1.grid(axis="y", alpha=0.3)
        ax1.set_ylim(top=ax1.get_ylim()[1] * 1.12)
        ax1.legend(frameon=False, fontsize=8, loc="upper center", ncol=3)
        bars(ax2, ["p50", "p99"], [f.num("get_p50_ms"), f.num("get_p99_ms")])
        ax2.set_ylabel("ms")
        ax2.set_title("GetOperation latency under that load")
        workers, cores = f.num("workers"), f.num("cpu_cores")
        sub = "bench-coordinator"
        if workers is not None and cores is not None:
            sub += f": {fmt(workers)} workers, {fmt(cores)} CPU cores"
        fig.suptitle(sub, fontsize=10)
        save(fig, ctx.img_dir / "coordinator.png")
        images.append(("coordinator tasks/s by round against the raw SKIP LOCKED loop, "
                       "and GetOperation latency", "coordinator.png"))
    return text, table, goals, images


def reliability_section(f, ctx):
    text = [
        "Four suites on real processes (`docs/reliability.md`). The fault campaign streams "
        "index builds and deletion requests on fmnist-tiny models through `lethe-coordinator` "
        "replicas and `lethe-worker serve` processes while it SIGKILLs workers in the middle "
        "of tasks, restarts coordinators (every other time with a second replica serving), "
        "restarts PostgreSQL and takes the artifact store away; after quiescence it checks "
        "from the database and the store what was lost, committed twice or corrupted. The "
        "bad-input suite sends malformed and hostile requests (bad tokens and other tenants' "
        "resources among them) through a gRPC client to the binary with API tokens, and "
        "checks each answer's code and message, that nothing was written, and that every "
        "refusal of a caller is in the audit log. The malformed-object suite registers "
        "garbage, truncated, foreign, mis-hashed and missing checkpoints and datasets and "
        "checks that their operations fail with a reason and no worker dies. The overload "
        "suite locks the database under a coordinator limited to 4 calls and sends 200 more.",
        "",
    ]
    rows = [
        ("worker SIGKILLs in the middle of a task", f.num("worker_kills"), "worker_kills"),
        ("coordinator restarts", f.num("coordinator_restarts"), "coordinator_restarts"),
        ("PostgreSQL restarts", f.num("postgres_restarts"), "postgres_restarts"),
        ("artifact-store faults", f.num("store_faults"), "store_faults"),
        ("operations accepted", f.num("requests"), "requests"),
        ("lost (accepted, not terminal)", f.num("lost"), "lost"),
        ("failed (terminal, not done)", f.num("failed_requests"), "failed_requests"),
        ("tasks or runs committed twice", f.num("double_commits"), "double_commits"),
        ("committed artifacts whose bytes differ", f.num("hash_mismatches"), "hash_mismatches"),
        ("leases left after quiescence", f.num("orphaned_leases"), "orphaned_leases"),
        ("fault campaign, seconds", f.num("chaos_seconds"), "chaos_seconds"),
        ("hostile requests", f.num("bad_inputs"), "bad_inputs"),
        ("answered with a wrong code or an unclear message", f.num("wrong_codes"), "wrong_codes"),
        ("that wrote rows", f.num("bad_input_writes"), "bad_input_writes"),
        ("cross-tenant attempts", f.num("cross_tenant_attempts"), "cross_tenant_attempts"),
        ("cross-tenant attempts allowed", f.num("cross_tenant_allowed"), "cross_tenant_allowed"),
        ("refusals that should be in the audit log", f.num("refusals_expected_in_audit_log"),
         "refusals_expected_in_audit_log"),
        ("of which missing from it", f.num("refusals_missing_from_audit_log"),
         "refusals_missing_from_audit_log"),
        ("malformed objects behind registered names", f.num("malformed_objects"),
         "malformed_objects"),
        ("whose operation did not fail with a reason", f.num("malformed_objects_wrong"),
         "malformed_objects_wrong"),
        ("calls sent to a full coordinator", f.num("overload_calls"), "overload_calls"),
        ("shed with RESOURCE_EXHAUSTED and a retry hint", f.num("overload_shed"),
         "overload_shed"),
        ("answered otherwise", f.num("overload_other_answers"), "overload_other_answers"),
        ("processes that died on their own (all suites)", f.num("crashes"), "crashes"),
    ]
    for key in ("chaos_crashes", "bad_input_crashes", "malformed_objects_worker_crashes"):
        f.used.add(key)
    source = "issue 7"
    goals = [(f"`{key}` = 0", source, f.num(key), 0, "==")
             for key in ("lost", "double_commits", "hash_mismatches", "crashes",
                         "wrong_codes", "cross_tenant_allowed")]
    goals += [(f"`{key}` = 0", "the security and backpressure checks", f.num(key), 0, "==")
              for key in ("refusals_missing_from_audit_log", "malformed_objects_wrong",
                          "overload_other_answers")]
    goals += [("at least 100 worker kills", source, f.num("worker_kills"), 100, ">="),
              ("at least 10 coordinator restarts", source, f.num("coordinator_restarts"), 10,
               ">="),
              ("at least 3 PostgreSQL restarts", source, f.num("postgres_restarts"), 3, ">="),
              ("at least 500 hostile requests", source, f.num("bad_inputs"), 500, ">=")]
    return text, figures_table(rows), goals, []


def generic_section(f, ctx):
    """A JSON this script does not know: its scalar figures, as they are."""
    text = ["`bench/report.py` has no description of this benchmark; its figures as recorded:"]
    rows = ["| key | value |", "|---|---:|"]
    for key in f.keys():
        value = f.doc[key]
        f.used.add(key)
        if isinstance(value, (dict, list)):
            rows.append(f"| `{key}` | ({kind_of(value)}) |")
        elif isinstance(value, str):
            rows.append(f"| `{key}` | {value} |")
        else:
            rows.append(f"| `{key}` | {fmt(value)} |")
    return text, rows, [], []


def setup_line(workload, parts):
    shown = [template.format(fmt(value) if not isinstance(value, str) else value)
             for _, value, template in parts if value is not None]
    head = f"Workload: {workload}." if workload else ""
    tail = "Run: " + ", ".join(shown) + "." if shown else ""
    return " ".join(p for p in (head, tail) if p) or "The JSON records no set-up."


BENCHMARKS = [
    # (file stem, title, make target, renderer)
    ("ensemble", "Ensemble training", "bench-ensemble", ensemble_section),
    ("attribution", "Attribution index", "bench-attribution", attribution_section),
    ("quality", "Unlearning quality (KLoM)", "bench-quality", quality_section),
    ("coordinator", "Coordinator throughput", "bench-coordinator", coordinator_section),
    ("reliability", "Reliability under faults and hostile input", "chaos", reliability_section),
]


def render(results_dir, out, img_dir):
    # Companions are rendered with their benchmark's own page, not as results of their own.
    known = {stem for stem, *_ in BENCHMARKS} | {"quality-candidates"}
    others = sorted(p.stem for p in results_dir.glob("*.json") if p.stem not in known)
    rel_img = Path(os.path.relpath(img_dir, out.parent)).as_posix()
    rel_results = Path(os.path.relpath(results_dir, out.parent)).as_posix()
    ctx = Context(results_dir, img_dir, rel_results)

    entries = [(stem, title, f"make {target}", fn) for stem, title, target, fn in BENCHMARKS]
    entries += [(stem, f"`{stem}.json`", None, None) for stem in others]
    # every file is parsed before anything is written, so a malformed one changes nothing
    docs = {stem: load(results_dir / f"{stem}.json") for stem, *_ in entries}
    img_dir.mkdir(parents=True, exist_ok=True)
    summary = ["| benchmark | command | result | status |", "|---|---|---|---|"]
    sections = []
    written = set()
    for stem, title, command, fn in entries:
        path = results_dir / f"{stem}.json"
        doc = docs[stem]
        anchor = title.lower().replace(" ", "-").replace("(", "").replace(")", "").replace("`", "")
        anchor = anchor.replace(".", "")
        cmd = f"`{command}`" if command else "—"
        link = f"[`{path.as_posix()}`]({rel_results}/{stem}.json)"
        lines = ["", f"## {title}", ""]
        if doc is None:
            summary.append(f"| [{title}](#{anchor}) | {cmd} | {link} | not run yet |")
            lines += [f"Not run yet: `{command}` writes `{path.as_posix()}`; then run "
                      "`make bench-report` again."]
            sections += lines
            continue
        summary.append(f"| [{title}](#{anchor}) | {cmd} | {link} | recorded |")
        fields = Fields(path, doc)
        text, table, goals, images = (fn or generic_section)(fields, ctx)
        if command:
            lines += [f"**Command:** `{command}` writes {link}.", ""]
        lines += text
        if table:
            lines += ["", "**Key figures:**", ""] + table
        if fn is not None:
            lines += [""] + goal_lines(goals)
        for alt, name in images:
            written.add(name)
            lines += ["", f"![{alt}]({rel_img}/{name})"]
        lines += extra_lines(fields)
        sections += lines

    for png in sorted(img_dir.glob("*.png")):
        if png.name not in written:
            png.unlink()

    page = [
        "# Benchmarks",
        "",
        f"Generated by `make bench-report` from `{results_dir.as_posix()}/*.json`; do not edit "
        "by hand. Every figure on this page is read from those files (three significant "
        "digits; whole numbers from 1,000 up); the goals are quoted from the documents named "
        "beside them. "
        "Rerun a benchmark with its `make` target, which rewrites its JSON, then "
        "`make bench-report`.",
        "",
    ] + summary + sections
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(page) + "\n")
    return sorted(written)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("bench/results"),
                        help="directory of the benchmarks' JSON files")
    parser.add_argument("--out", type=Path, default=Path("docs/BENCHMARKS.md"))
    parser.add_argument("--img-dir", type=Path, default=Path("docs/benchmarks"),
                        help="where the PNGs go (owned by this script)")
    args = parser.parse_args()
    if not args.results.is_dir():
        sys.exit(f"bench-report: {args.results} is not a directory")
    try:
        images = render(args.results, args.out, args.img_dir)
    except ReportError as e:
        sys.exit(f"bench-report: {e}")
    print(f"wrote {args.out} and {len(images)} plots in {args.img_dir}/: {', '.join(images)}")


if __name__ == "__main__":
    main()
