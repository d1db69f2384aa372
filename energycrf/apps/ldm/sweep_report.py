"""The sweep's report: Markdown tables with intervals, the verdicts, and the Pareto figure."""

from __future__ import annotations

from pathlib import Path

COLUMNS = (("latent_mse", "latent MSE to teacher", 3), ("psnr", "PSNR to teacher (dB)", 4),
           ("frechet", "Frechet distance", 4), ("accuracy", "class accuracy", 3), ("vendi", "Vendi", 4))


def _fmt(d: dict | None, digits: int) -> str:
    from energycrf.integrations.metrics import Estimate

    return "" if d is None else Estimate.from_dict(d).format(digits)


def verdicts(result: dict, rule: str = "same cost") -> list[dict]:
    """Per CRF row and peer: whether the CRF beats the peer under ``rule`` on *every* seed set."""
    groups: dict[tuple, list[dict]] = {}
    for c in result["comparisons"]:
        if c["rule"] == rule:
            groups.setdefault((c["method"], c["calls"], c["peer"]), []).append(c)
    out = []
    for (method, calls, peer), cs in groups.items():
        out.append({"method": method, "label": cs[0]["label"], "calls": calls, "budget": cs[0]["budget"],
                    "peer": peer, "peer_label": cs[0]["peer_label"], "peer_calls": sorted({c["peer_calls"] for c in cs}),
                    "seed_sets": len(cs), "beats_all": all(c["beats"]["all"] for c in cs),
                    "teacher": all(c["beats"]["teacher"] for c in cs), "frechet": all(c["beats"]["frechet"] for c in cs),
                    "accuracy_not_lower": all(c["beats"]["accuracy_not_lower"] for c in cs)})
    return out


def markdown(result: dict) -> str:
    """Rows per seed set, then the paired comparisons and the verdicts."""
    lines = []
    n = result["images_per_row"]
    head = "| Method | UNet calls | CRF cost | budget | " + " | ".join(t for _, t, _ in COLUMNS) + " |"
    rule = "|---|---:|---:|---:|" + "---:|" * len(COLUMNS)
    for k, seeds in enumerate(result["seed_sets"]):
        lines += [f"### Seed set {k} (seeds {seeds[0]}-{seeds[-1]}): {n} images per row, "
                  f"{len(result['prompts'])} prompts x {len(seeds)} seeds", "", head, rule]
        for r in (r for r in result["rows"] if r["seed_set"] == k):
            e = r["estimates"]
            cells = " | ".join(_fmt(e.get(key), d) for key, _, d in COLUMNS)
            lines.append(f"| {r['label']} | {r['unet_calls']} | {r['crf_cost']:.3f} | {r['budget']:.2f} | {cells} |")
        lines.append("")
    if result["comparisons"]:
        lines += ["### Paired differences (CRF minus peer; 95% intervals over the same images: bootstrap, "
                  "jackknife for the Frechet distance)", "",
                  "| seed set | CRF | calls + cost | peer | rule | " + " | ".join(f"d {t}" for _, t, _ in COLUMNS)
                  + " | beats |", "|---:|---|---:|---|---|" + "---:|" * len(COLUMNS) + "---|"]
        for c in result["comparisons"]:
            cells = " | ".join(_fmt(c["difference"].get(key), d) for key, _, d in COLUMNS)
            b = c["beats"]
            flag = "**yes**" if b["all"] else ("teacher only" if b["teacher"] else ("FD only" if b["frechet"] else "no"))
            lines.append(f"| {c['seed_set']} | {c['label']} | {c['budget']:.2f} | {c['peer_label']} {c['peer_calls']} "
                         f"| {c['rule']} | {cells} | {flag} |")
        lines += ["", "### Verdicts (same cost: the peer's cheapest budget at or above the CRF's calls + cost)", ""]
        for v in verdicts(result):
            word = "beats" if v["beats_all"] else "does not beat"
            lines.append(f"- {v['label']} ({v['calls']} calls + CRF = {v['budget']:.2f}) {word} {v['peer_label']} "
                         f"with {'/'.join(map(str, v['peer_calls']))} calls on all {v['seed_sets']} seed sets "
                         f"(teacher measures: {'yes' if v['teacher'] else 'no'}, FD: {'yes' if v['frechet'] else 'no'}, "
                         f"accuracy not lower: {'yes' if v['accuracy_not_lower'] else 'no'})")
    return "\n".join(lines)


def pareto_figure(result: dict, path: str | Path) -> Path:
    """Latent MSE to the teacher, PSNR and FD against the budget (UNet calls + CRF cost), with intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("latent_mse", "latent MSE to teacher", True), ("psnr", "PSNR to teacher (dB)", False),
              ("frechet", "Frechet distance (classifier)", False))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=90)
    methods = list(dict.fromkeys(r["method"] for r in result["rows"] if r["kind"] != "teacher"))
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    sets = len(result["seed_sets"])
    for ax, (key, title, log) in zip(axes, panels):
        for m in methods:
            for k in range(sets):
                rows = sorted((r for r in result["rows"] if r["method"] == m and r["seed_set"] == k),
                              key=lambda r: r["budget"])
                if not rows:
                    continue
                x = [r["budget"] + 0.08 * k for r in rows]
                est = [r["estimates"][key] for r in rows]
                y = [e["value"] for e in est]
                err = [[e["value"] - e["low"] for e in est], [e["high"] - e["value"] for e in est]]
                crf = rows[0]["kind"] != "plain"
                ax.errorbar(x, y, yerr=err if k == 0 else None, color=colours[m], marker="s" if crf else "o", ms=4, capsize=2, lw=1,
                            ls="--" if k else "-", mfc="none" if k else colours[m],
                            label=f"{rows[0]['label']}" if k == 0 else None)
        teacher = [r for r in result["rows"] if r["kind"] == "teacher" and key in r["estimates"]]
        if teacher:
            line = ax.axhline(teacher[0]["estimates"][key]["value"], color="grey", ls=":", lw=1)
            ax.legend([line], [f"{teacher[0]['label']}, seed set 0"], fontsize=7, loc="upper right")
        ax.set_xlabel("UNet calls + CRF cost")
        ax.set_title(title, fontsize=9)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if sets > 1:
        fig.suptitle("filled, solid, with 95% intervals: seed set 0; open, dashed: the other seed sets (shifted right)",
                     fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
