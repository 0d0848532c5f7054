"""Render the unlearning-quality benchmark (`make bench-quality`) as a Markdown page with plots.

usage: report_quality.py --json bench/results/quality.json
                         --per-point bench/work/quality/klom-per-point.safetensors
                         --out-dir bench/results

Writes OUT_DIR/quality.md and, under OUT_DIR/quality/, for each forget set S: S-klom.png (the
per-point KLoM distribution of every method on the forget, retain and validation points) and
S-accuracy.png; plus cost.png and, for the forget-set suite, a table of every instance and
confidence.png (DMM's confidence against its real gap closure). Every number on the page comes from the two inputs; the page
holds no timestamps, so reruns diff cleanly.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

METHODS = ["do_nothing", "ga", "gd", "scrub", "dmm", "om", "noise_floor"]
SPLITS = ["forget", "retain", "val"]
SPLIT_TITLES = {"forget": "forget", "retain": "retain", "val": "validation"}
KLOM_YLIM = (0.0, 11.6)  # KLoM's maximum is about 11.51
REFERENCE = "noise_floor"
REF_COLOR = "0.6"
P95_COLOR = "crimson"
P95_TOLERANCE = 0.05  # warn when the per-point P95 and the JSON's disagree by more than this
DPI = 110


def fmt(x):
    """A number with 3 significant digits; '—' for a missing value."""
    if x is None:
        return "—"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if math.isnan(x):
        return "n/a"
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:#.3g}".rstrip(".")


def ordered(names):
    """The known methods in the page's order, then unknown ones, the noise floor last."""
    names = set(names)
    known = [m for m in METHODS if m in names and m != REFERENCE]
    extra = sorted(names - set(METHODS))
    return known + extra + ([REFERENCE] if REFERENCE in names else [])


def method_colors(methods):
    """One colour per method, the same in every plot whichever methods are present."""
    cmap = plt.get_cmap("tab10")
    extra = [m for m in methods if m not in METHODS]
    slot = {m: i for i, m in enumerate([m for m in METHODS if m != REFERENCE] + extra)}
    return {m: REF_COLOR if m == REFERENCE else cmap(slot[m] % 10) for m in methods}


def split_values(per_point, fs):
    """{method: {split: per-point KLoM}} for forget set `fs`, or None if it has no data."""
    if f"{fs}/forget" not in per_point:
        return None
    num_train = int(np.asarray(per_point["num_train"]).reshape(-1)[0])
    forget = np.asarray(per_point[f"{fs}/forget"], dtype=np.int64)
    if forget.size and (forget.min() < 0 or forget.max() >= num_train):
        sys.exit(f"{fs}/forget has indices outside the training set (num_train={num_train})")
    is_forget = np.zeros(num_train, dtype=bool)
    is_forget[forget] = True
    out = {}
    for key, values in per_point.items():
        if not key.startswith(f"{fs}/") or key == f"{fs}/forget":
            continue
        values = np.asarray(values, dtype=np.float64)
        train = values[:num_train]
        out[key.split("/", 1)[1]] = {
            "forget": train[is_forget],
            "retain": train[~is_forget],
            "val": values[num_train:],
        }
    return out


def check_p95(fs, per_method, metrics):
    for m, splits in per_method.items():
        if len(metrics.get(m, {}).get("gap_closure_by_seed") or []) > 1:
            # Several request seeds: the JSON has the mean of their P95s, the per-point file
            # each point's mean KLoM, whose P95 is a different statistic.
            continue
        for split in SPLITS:
            want = metrics.get(m, {}).get(f"{split}_p95")
            if want is None or splits[split].size == 0:
                continue
            got = float(np.percentile(splits[split], 95))
            if abs(got - want) > P95_TOLERANCE:
                print(
                    f"warning: {fs}/{m} {split} P95 is {got:.4f} in the per-point file "
                    f"but {want:.4f} in the JSON",
                    file=sys.stderr,
                )


def plot_klom(fs, per_method, metrics, path):
    methods = ordered(per_method)
    colors = method_colors(methods)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.2), sharey=True)
    for ax, split in zip(axes, SPLITS):
        data = [per_method[m][split] for m in methods]
        n = data[0].size if data else 0
        boxes = ax.boxplot(
            data,
            whis=(1, 99),
            showfliers=False,
            patch_artist=True,
            medianprops={"color": "black"},
        )
        ax.set_xticks(range(1, len(methods) + 1), methods, rotation=30, ha="right")
        for patch, m in zip(boxes["boxes"], methods):
            patch.set_facecolor(colors[m])
            patch.set_alpha(0.55)
        for i, (m, values) in enumerate(zip(methods, data), start=1):
            p95 = metrics.get(m, {}).get(f"{split}_p95")
            if p95 is None and values.size:
                p95 = float(np.percentile(values, 95))
            if p95 is None:
                continue
            ax.plot(i, p95, marker="D", color=P95_COLOR, markersize=7, zorder=5)
            ax.annotate(fmt(p95), (i, p95), xytext=(7, 0), textcoords="offset points",
                        va="center", fontsize=8, color=P95_COLOR,
                        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 1})
            if m == REFERENCE:
                ax.axhline(p95, color=REF_COLOR, linestyle="--", linewidth=1, zorder=1)
        ax.set_xlim(0.4, len(methods) + 0.9)
        ax.set_title(f"{SPLIT_TITLES[split]} points (n = {n})")
        ax.set_ylim(*KLOM_YLIM)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("per-point KLoM (lower is better)")
    handles = [
        plt.Line2D([], [], marker="D", color=P95_COLOR, linestyle="", label="P95"),
        plt.Line2D([], [], color=REF_COLOR, linestyle="--", label="noise-floor P95"),
    ]
    fig.legend(handles=handles, loc="upper right", ncol=2, frameon=False)
    fig.suptitle(f"{fs} forget set: per-point KLoM (box: quartiles, whiskers: P1–P99; "
                 "methods run with several seeds: each point's mean)")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_accuracy(fs, metrics, path):
    methods = ordered(metrics)
    x = np.arange(len(methods))
    width = 0.27
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for k, split in enumerate(SPLITS):
        acc = [metrics[m].get(f"{split}_accuracy", np.nan) for m in methods]
        acc = [np.nan if a is None else a for a in acc]
        ax.bar(x + (k - 1) * width, acc, width, label=SPLIT_TITLES[split])
    ax.set_xticks(x, methods, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{fs} forget set: accuracy per split")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_cost(fs, metrics, doc, path):
    methods = ordered(metrics)
    costs = [metrics[m].get("cost_vs_retrain") for m in methods]
    costs = [np.nan if c is None else float(c) for c in costs]
    positive = [c for c in costs if c > 0]
    log = len(positive) >= 2 and max(positive) / min(positive) > 10
    colors = method_colors(methods)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.bar(methods, [c if c > 0 else np.nan for c in costs],
           color=[colors[m] for m in methods])
    if log:
        ax.set_yscale("log")
    ax.axhline(1.0, color="black", linestyle=":", linewidth=1, label="one retrain")
    for i, c in enumerate(costs):
        if c > 0:
            ax.annotate(fmt(c), (i, c), xytext=(0, 3), textcoords="offset points",
                        ha="center", va="bottom", fontsize=8)
        else:  # no bar to label: write the value just above the axis
            ax.text(i, 0.02, fmt(c), transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    ax.set_xlim(-0.6, len(methods) - 0.4)
    ax.set_ylabel("example passes per model / one retrain's")
    note = (
        f"measured: DMM {fmt(doc.get('dmm_seconds_per_request'))} s per request / "
        f"retrain {fmt(doc.get('retrain_seconds'))} s = cost ratio "
        f"{fmt(doc.get('cost_ratio'))}"
    )
    ax.set_title(f"Compute cost relative to retraining ({fs} forget set)\n{note}", fontsize=11)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def table(metrics):
    rows = [
        "| method | forget P95 | retain P95 | val P95 | forget P99 | gap closure "
        "| accuracy forget / retain / val | cost vs retrain |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in ordered(metrics):
        r = metrics[m]
        acc = " / ".join(fmt(r.get(f"{s}_accuracy")) for s in SPLITS)
        closure = fmt(r.get("gap_closure"))
        by_seed = r.get("gap_closure_by_seed") or []
        if len(by_seed) > 1:
            closure += f" ({fmt(min(by_seed))}–{fmt(max(by_seed))} over {len(by_seed)} seeds)"
        cells = [f"`{m}`", fmt(r.get("forget_p95")), fmt(r.get("retain_p95")),
                 fmt(r.get("val_p95")), fmt(r.get("forget_p99")), closure,
                 acc, fmt(r.get("cost_vs_retrain"))]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def settings(metrics):
    lines = []
    for m in ordered(metrics):
        config, note = metrics[m].get("config"), metrics[m].get("note")
        if config is None and not note:
            continue
        parts = []
        if config is not None:
            parts.append(f"`{json.dumps(config, sort_keys=True)}`")
        if note:
            parts.append(str(note))
        same = metrics[m].get("do_nothing_same_models")
        if same:
            parts.append(
                f"on {fmt(metrics[m].get('models'))} models, where doing nothing scores forget / "
                f"retain / val P95 {fmt(same['forget_p95'])} / {fmt(same['retain_p95'])} / "
                f"{fmt(same['val_p95'])} (its closure is against those)")
        lines.append(f"- `{m}`: " + " — ".join(parts))
    return lines


def setup_sentence(doc):
    """The benchmark's setup, from the keys that are present."""
    phrases = [
        ("n", "N = {} models unlearned per method"),
        ("n_oracles", "N′ = {} oracles (retrained without the forget set)"),
        ("held_out_oracles", "{} held-out oracles (the noise floor)"),
        ("estimation_models", "{} estimation models"),
        ("retrain_examples_per_model", "{} example passes per retrained model"),
    ]
    head = f"Workload `{doc.get('workload', '—')}`, model `{doc.get('model', '—')}`."
    parts = [text.format(fmt(doc[key])) for key, text in phrases if doc.get(key) is not None]
    return head + (" " + ", ".join(parts) + "." if parts else "")


SUITE_METHODS = ["dmm", "om", "ga", "gd", "scrub"]


POLICY_MINIMUMS = [0.5, 0.6, 0.7, 0.8, 0.9]


def policy_table(suite):
    """What `min_confidence` would do on the reporting instances: how many it sends to a
    retrain (exact: closure 1), and the worst closure of those DMM still serves."""
    reported = [e for e in suite if e["split"] == "reporting" and e.get("measurable", True)
                and e.get("confidence") is not None]
    if not reported:
        return []
    lines = ["", "With `min_confidence` (measurable reporting instances; a retrain closes the "
             "whole gap at the cost of a retrain):", "",
             "| min_confidence | retrained | worst DMM closure served | worst served family |",
             "|---:|---:|---:|---|"]
    for minimum in POLICY_MINIMUMS:
        served = [e for e in reported if e["confidence"] >= minimum]
        worst = min(served, key=lambda e: e["dmm"]["gap_closure"], default=None)
        lines.append(
            f"| {minimum} | {len(reported) - len(served)}/{len(reported)} | "
            f"{fmt(worst['dmm']['gap_closure']) if worst else '—'} | "
            f"{worst['instance'] if worst else '—'} |"
        )
    return lines + [""]


def suite_section(doc):
    """The forget-set suite: the goals' figures, then every instance (reporting ones first)."""
    suite = doc.get("suite") or []
    if not suite:
        return []
    g = doc.get
    lines = [
        "", "## Forget-set suite", "",
        "Every instance of `lethe_ml::forget_sets::SUITE` (seven families; defaults are chosen on "
        "the tuning instances only, the others are reported). Every method at its shipped "
        f"setting; DMM and OM on {fmt(g('n'))} models with several request seeds, GA, GD and "
        f"SCRUB on the first {fmt(g('n_baselines'))} with one, each against doing nothing on the "
        "same models. A closure is blank where doing nothing already sits within 25 % of the "
        "noise floor (`measurable: false`): removing the set barely changes the models.", "",
        f"- `suite_reporting_min_closure`: {fmt(g('suite_reporting_min_closure'))}",
        f"- `suite_reporting_min_closure_minus_om`: {fmt(g('suite_reporting_min_closure_minus_om'))}",
        f"- `suite_reporting_max_retain_excess`: {fmt(g('suite_reporting_max_retain_excess'))}",
        f"- `suite_reporting_max_val_excess`: {fmt(g('suite_reporting_max_val_excess'))}",
        f"- `confidence_spearman` (DMM's confidence against its closure, all measurable "
        f"instances): {fmt(g('confidence_spearman'))}",
        f"- not measurable: {', '.join(g('suite_unmeasurable') or []) or 'none'}",
        "",
        "| instance | split | do-nothing forget P95 | DMM confidence | "
        + " | ".join(f"{m} closure" for m in SUITE_METHODS)
        + " | DMM retain − do-nothing | DMM val − do-nothing |",
        "|---|---|---:|---:|" + "---:|" * len(SUITE_METHODS) + "---:|---:|",
    ]
    lines += policy_table(suite)
    order = sorted(suite, key=lambda e: (e["split"] != "reporting", e["instance"]))
    for entry in order:
        nothing = entry["do_nothing"]
        dmm = entry["dmm"]
        closures = [fmt((entry.get(m) or {}).get("gap_closure")) for m in SUITE_METHODS]
        lines.append(
            f"| `{entry['instance']}` | {entry['split']} | {fmt(nothing['forget_p95'])} | "
            f"{fmt(entry.get('confidence'))} | " + " | ".join(closures) + " | "
            f"{fmt(dmm['retain_p95'] - nothing['retain_p95'])} | "
            f"{fmt(dmm['val_p95'] - nothing['val_p95'])} |"
        )
    return lines


def candidates_section(candidates):
    """`--explore`'s estimators of DMM's shift on the tuning instances, one row per variant and
    multiplier: mean and worst closure, worst retain and validation excess over doing nothing."""
    rows = (candidates or {}).get("rows") or []
    if not rows:
        return []
    lines = [
        "", "## Candidate estimators (tuning instances only)", "",
        "From `bench_quality --explore` (`quality-candidates.json`): each estimator of DMM's "
        "shift through the shipped fine-tune, on the suite's tuning instances, request seeds "
        f"{', '.join(str(s) for s in candidates.get('seeds', []))}. `harmless` counts the "
        "instances where retain and validation P95 stay within 0.1 of doing nothing.", "",
        "| variant | multiplier | mean closure | worst closure | worst retain excess | "
        "worst val excess | harmless |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    groups = {}
    for row in rows:
        groups.setdefault((row["variant"], row["multiplier"]), []).append(row)
    for (variant, multiplier), group in groups.items():
        closures = [r["gap_closure"] for r in group]
        retain = [r["retain_p95"] - r["do_nothing_retain_p95"] for r in group]
        val = [r["val_p95"] - r["do_nothing_val_p95"] for r in group]
        harmless = sum(1 for a, b in zip(retain, val) if a <= 0.1 and b <= 0.1)
        lines.append(
            f"| `{variant}` | {fmt(multiplier)} | {fmt(sum(closures) / len(closures))} | "
            f"{fmt(min(closures))} | {fmt(max(retain))} | {fmt(max(val))} | "
            f"{harmless}/{len(group)} |"
        )
    by_instance = {}
    for row in rows:
        by_instance.setdefault(row["instance"], {})[(row["variant"], row["multiplier"])] = row
    variants = list(groups)
    lines += ["", "Closure per tuning instance:", "",
              "| instance | " + " | ".join(f"`{v}` m={fmt(m)}" for v, m in variants) + " |",
              "|---|" + "---:|" * len(variants)]
    for instance, cells in by_instance.items():
        lines.append(f"| `{instance}` | " + " | ".join(
            fmt((cells.get(key) or {}).get("gap_closure")) for key in variants) + " |")
    return lines


def plot_confidence(doc, path):
    """DMM's confidence before the fine-tune against the closure it reached."""
    points = [(e.get("confidence"), (e.get("dmm") or {}).get("gap_closure"), e["split"],
               e["family"]) for e in doc.get("suite") or []]
    points = [p for p in points if p[0] is not None and p[1] is not None]
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(7, 5))
    families = sorted({p[3] for p in points})
    colors = plt.get_cmap("tab10")
    for k, family in enumerate(families):
        for split, marker in [("tuning", "o"), ("reporting", "s")]:
            chosen = [p for p in points if p[3] == family and p[2] == split]
            if chosen:
                ax.scatter([p[0] for p in chosen], [p[1] for p in chosen], marker=marker,
                           color=colors(k), label=f"{family} ({split})")
    ax.axhline(0.8, color=REF_COLOR, linestyle="--", linewidth=1)
    ax.set_xlabel("DMM confidence (before the fine-tune)")
    ax.set_ylabel("DMM gap closure (audit)")
    ax.set_title(f"confidence vs closure (Spearman {fmt(doc.get('confidence_spearman'))})")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def markdown(doc, sources, sections, cost_image, confidence_image, candidates):
    g = doc.get
    lines = [
        "# Unlearning quality (KLoM)",
        "",
        f"Generated by `make bench-quality` from {sources}; do not edit by hand.",
        "",
        setup_sentence(doc),
        "",
        "KLoM is computed per target point (training and validation points); lower is better, "
        "and the noise floor is the score of held-out oracles, i.e. what retraining itself "
        "achieves. **Gap closure** = (do-nothing forget P95 − method forget P95) / "
        "(do-nothing forget P95 − noise-floor forget P95): 0 is doing nothing, 1 matches "
        "the noise floor. **Cost vs retrain** = the method's example passes per model over "
        "one retrain's. GA, GD and SCRUB were each run over a grid of learning rates; each "
        "is reported at the one setting, the same for every forget set, that keeps retain and "
        "validation P95 within 0.1 of doing nothing on all of them and closes the most gap on "
        "average (every setting's result is in the JSON's `grid`). DMM and OM run with the "
        "shipped defaults and with several request seeds (the retained sample and the "
        "shuffles); their P95s are means over the seeds, with the range of closures shown.",
    ]
    lines += suite_section(doc)
    if confidence_image:
        lines += ["", f"![confidence vs closure]({confidence_image})"]
    lines += candidates_section(candidates)
    info = g("forget_set_info") or {}
    if sections:
        lines += ["", "The two historical forget sets below are the suite's `random/7` and "
                  "`input_neighbours/0`: tuning instances, on which the baselines' grids and "
                  "DMM's ablation run, so their figures are in-sample."]
    for fs, metrics, images in sections:
        lines += ["", f"## Forget set: {fs}", ""]
        fs_info = info.get(fs) or {}
        if fs_info:
            desc = f"Size {fmt(fs_info.get('size'))}."
            if fs_info.get("construction"):
                desc += f" {fs_info['construction']}"
            lines += [desc, ""]
        lines += table(metrics)
        notes = settings(metrics)
        if notes:
            lines += ["", "Method settings:", ""] + notes
        for alt, rel in images:
            lines += ["", f"![{alt}]({rel})"]
    ablation = g("dmm_ablation") or {}
    if ablation:
        lines += ["", "## DMM ablation", "",
                  "Gap closure with one shipped choice undone at a time (`paper`: the DMM "
                  "paper's arithmetic and fine-tune).", "",
                  "| variant | " + " | ".join(f"{fs} closure | {fs} retain P95" for fs in ablation) + " |",
                  "|---|" + "---:|---:|" * len(ablation)]
        variants = list(next(iter(ablation.values())).keys())
        for variant in variants:
            cells = []
            for fs in ablation:
                row = ablation[fs].get(variant) or {}
                cells += [fmt(row.get("gap_closure")), fmt(row.get("retain_p95"))]
            lines.append(f"| `{variant}` | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Cost",
        "",
        f"- DMM seconds per request: {fmt(g('dmm_seconds_per_request'))}",
        f"- Retrain seconds: {fmt(g('retrain_seconds'))}",
        f"- Cost ratio (DMM seconds per request / retrain seconds): {fmt(g('cost_ratio'))}",
    ]
    if cost_image:
        lines += ["", f"![cost vs retrain]({cost_image})"]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, type=Path, help="quality.json")
    parser.add_argument("--per-point", required=True, type=Path,
                        help="per-point KLoM (safetensors)")
    parser.add_argument("--out-dir", required=True, type=Path,
                        help="where quality.md and quality/ go")
    parser.add_argument("--candidates", type=Path,
                        help="quality-candidates.json from --explore (rendered when it exists)")
    args = parser.parse_args()

    doc = json.loads(args.json.read_text())
    per_point = load_file(str(args.per_point))
    img_dir = args.out_dir / "quality"
    img_dir.mkdir(parents=True, exist_ok=True)

    forget_sets = doc.get("forget_sets") or {}
    sections = []
    for fs, metrics in forget_sets.items():
        metrics = {m: r for m, r in (metrics or {}).items() if isinstance(r, dict)}
        images = []
        per_method = split_values(per_point, fs)
        if per_method:
            check_p95(fs, per_method, metrics)
            plot_klom(fs, per_method, metrics, img_dir / f"{fs}-klom.png")
            images.append((f"{fs}: per-point KLoM", f"quality/{fs}-klom.png"))
        else:
            print(f"warning: no per-point KLoM for forget set {fs}", file=sys.stderr)
        if metrics:
            plot_accuracy(fs, metrics, img_dir / f"{fs}-accuracy.png")
            images.append((f"{fs}: accuracy", f"quality/{fs}-accuracy.png"))
        sections.append((fs, metrics, images))

    cost_image = None
    cost_fs = "random" if forget_sets.get("random") else next(
        (fs for fs, metrics, _ in sections if metrics), None)
    if cost_fs is not None:
        metrics = dict(next(s[1] for s in sections if s[0] == cost_fs))
        plot_cost(cost_fs, metrics, doc, img_dir / "cost.png")
        cost_image = "quality/cost.png"

    confidence_image = None
    if plot_confidence(doc, img_dir / "confidence.png"):
        confidence_image = "quality/confidence.png"

    out = args.out_dir / "quality.md"
    sources = f"`{args.json.name}` and `{args.per_point.name}`"
    candidates = None
    if args.candidates is not None and args.candidates.exists():
        candidates = json.loads(args.candidates.read_text())
        sources += f" and `{args.candidates.name}`"
    out.write_text(markdown(doc, sources, sections, cost_image, confidence_image, candidates))
    print(f"wrote {out} and {img_dir}/")


if __name__ == "__main__":
    main()
