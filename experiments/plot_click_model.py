"""Dice per click of the base model and the click model (docs/clicks.md), from the training run's heldout.json.

    python experiments/plot_click_model.py docs/clicks/run_s16b/heldout.json docs/img/click_model_dice_per_click.png \
        [--before docs/clicks/run_s4/heldout.json]

``--before``: the previously shipped click model's run, drawn dotted (its box+clicks curve; its points figures in
that file predate the point route, so they are not drawn).
"""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SETS = {"shared": "shared/data (Colin27 slab A, CT 0051, phantom)", "mni152": "MNI152 2009a (held-out subject)",
        "colin27_other": "Colin27, other structures/views"}


def main(src: str, dst: str, before: str | None = None) -> int:
    summary = json.load(open(src))["summary"]
    previous = json.load(open(before))["summary"] if before else None
    fig, axes = plt.subplots(1, len(SETS), figsize=(4.2 * len(SETS), 3.6), sharey=True)
    for ax, (key, title) in zip(axes, SETS.items()):
        for model, style in (("base", "o--"), ("click_model", "o-")):
            curve = summary[f"{model}|box+clicks:5|{key}"]
            ax.plot(range(len(curve)), curve, style, label=f"{'LiteMedSAM base' if model == 'base' else 'click model'}: box+clicks")
            for proto, marker in (("points:1", "s"), ("points:5", "^")):
                v = summary[f"{model}|{proto}|{key}"][0]
                ax.plot([int(proto[-1])], [v], marker, color=ax.lines[-1].get_color(), alpha=0.6,
                        label=f"{model.replace('_', ' ')}: {proto}" if key == "shared" else None)
        if previous is not None:
            curve = previous[f"click_model|box+clicks:5|{key}"]
            ax.plot(range(len(curve)), curve, "o:", color="grey", alpha=0.8,
                    label="click model shipped before: box+clicks" if key == "shared" else None)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("clicks (0 = the box alone)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean Dice")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(dst, dpi=100)
    return 0


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("heldout")
    ap.add_argument("png")
    ap.add_argument("--before", help="the previously shipped model's heldout.json")
    a = ap.parse_args()
    raise SystemExit(main(a.heldout, a.png, a.before))
