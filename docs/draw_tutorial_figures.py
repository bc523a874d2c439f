"""Draws the tutorial's two diagrams: a residual block's graph with its backward, and im2col's layout.

Usage, from the repository root (tests/test_tutorial.py runs it into a temporary folder):

    python docs/draw_tutorial_figures.py [--out docs/tutorial]

Writes block_backward.png and im2col_layout.png. Needs matplotlib (the `plot` extra).
"""

from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402

FORWARD, BACKWARD = "#222222", "#c0392b"


def _box(ax, x, y, text, width=1.9, height=0.5, color="#eef3fb"):
    ax.add_patch(
        FancyBboxPatch(
            (x - width / 2, y - height / 2), width, height, boxstyle="round,pad=0.05", fc=color, ec="#555555"
        )
    )
    ax.text(x, y, text, ha="center", va="center", fontsize=10)


def _arrow(ax, start, end, color, label="", offset=(0.12, 0.0), style="-|>", rad=0.0):
    ax.add_patch(
        FancyArrowPatch(
            start, end, arrowstyle=style, mutation_scale=12, color=color, lw=1.4, connectionstyle=f"arc3,rad={rad}"
        )
    )
    if label:
        mx, my = (start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1]
        ax.text(mx, my, label, color=color, fontsize=8.5, ha="left", va="center")


def block_backward(path: str) -> None:
    """x forks into the main branch and the shortcut; forward top to bottom, backward bottom to top."""
    fig, ax = plt.subplots(figsize=(7.6, 8.2))
    main = ["conv1", "bn1", "relu1", "conv2", "bn2"]
    ys = {"x": 9.0, "conv1": 7.9, "bn1": 6.9, "relu1": 5.9, "conv2": 4.9, "bn2": 3.9, "+": 2.7, "relu_out": 1.7}
    _box(ax, 0, ys["x"], "x  (N, C, H, W)", color="#f7f7f7")
    for name in main:
        _box(ax, 0, ys[name], name)
    _box(ax, 0, ys["+"], "(+)   u = F(x) + S(x)", color="#fdf2e9")
    _box(ax, 0, ys["relu_out"], "relu_out")
    _box(ax, 0, 0.6, "y = relu(u)", color="#f7f7f7")
    _box(ax, 3.2, 5.9, "shortcut S\nidentity, option A,\nor 1x1 conv + BN", width=2.0, height=1.0, color="#eafaf1")
    order = ["x", *main, "+", "relu_out"]
    for a, b in zip(order, order[1:]):  # forward, down the main branch
        _arrow(ax, (-0.35, ys[a] - 0.27), (-0.35, ys[b] + 0.27), FORWARD)
    _arrow(ax, (-0.35, ys["relu_out"] - 0.27), (-0.35, 0.87), FORWARD)
    _arrow(ax, (0.95, ys["x"] - 0.1), (3.2, 6.42), FORWARD, rad=-0.2)  # x forks into the shortcut
    _arrow(ax, (3.2, 5.38), (0.95, ys["+"] + 0.1), FORWARD, rad=-0.2)
    labels = {
        "relu_out": "g_sum = g * (u > 0)",
        "+": "g_sum",
        "bn2": "",
        "conv2": "",
        "relu1": "",
        "bn1": "",
        "conv1": "dx_main",
    }
    back = ["relu_out", "+", "bn2", "conv2", "relu1", "bn1", "conv1", "x"]
    _arrow(ax, (0.35, 0.87), (0.35, ys["relu_out"] - 0.27), BACKWARD, "g = dL/dy")
    for a, b in zip(back, back[1:]):  # backward, up the main branch
        _arrow(ax, (0.35, ys[a] + 0.27), (0.35, ys[b] - 0.27), BACKWARD, labels.get(a, ""))
    _arrow(
        ax,
        (0.95, ys["+"] - 0.15),
        (3.7, 5.38),
        BACKWARD,
        "g_sum: the (+) hands it to both inputs",
        offset=(0.2, -0.35),
        rad=0.35,
    )
    _arrow(ax, (3.6, 6.42), (1.2, ys["x"] - 0.2), BACKWARD, "dx_short = S.backward(g_sum)", offset=(0.1, 0.25), rad=0.2)
    ax.text(0, 9.75, "dx = dx_main + dx_short   (x forked: its gradients add)", ha="center", color=BACKWARD)
    ax.text(-2.6, 5.0, "forward\n(top to\nbottom)", color=FORWARD, ha="center", fontsize=9)
    ax.text(-2.6, 3.2, "backward\n(bottom to\ntop)", color=BACKWARD, ha="center", fontsize=9)
    ax.set_xlim(-3.3, 5.0)
    ax.set_ylim(0.1, 10.1)
    ax.axis("off")
    ax.set_title("A residual block: the forward, and its backward read bottom-up")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def im2col_layout(path: str) -> None:
    """One 4x4 channel, 3x3 windows, stride 1, no padding: 4 windows -> 4 columns of 9 rows."""
    colors = ["#e74c3c", "#3498db", "#27ae60", "#f39c12"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 4.6), gridspec_kw={"width_ratios": [1, 1.05]})
    for r in range(4):
        for c in range(4):
            left.add_patch(Rectangle((c, 3 - r), 1, 1, fc="white", ec="#888888"))
            left.text(c + 0.5, 3.5 - r, str(4 * r + c), ha="center", va="center", fontsize=11)
    for k, (i, j) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        inset = 0.06 * (k + 1)
        left.add_patch(
            Rectangle((j + inset, 1 - i + inset), 3 - 2 * inset, 3 - 2 * inset, fill=False, ec=colors[k], lw=2)
        )
    left.set_xlim(-0.2, 4.2)
    left.set_ylim(-0.6, 4.2)
    left.set_aspect("equal")
    left.axis("off")
    left.set_title("x[0, 0]: 4x4 pixels, four 3x3 windows\n(stride 1: they overlap)", fontsize=10)
    for q, (i, j) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        for row in range(9):
            a, e = divmod(row, 3)
            pixel = 4 * (i + a) + (j + e)
            right.add_patch(Rectangle((q, 8 - row), 1, 1, fc=colors[q], alpha=0.25, ec="#888888"))
            right.text(q + 0.5, 8.5 - row, str(pixel), ha="center", va="center", fontsize=10)
        right.text(q + 0.5, 9.4, f"i, j\n{i}, {j}", ha="center", fontsize=8, color=colors[q])
    for row in range(9):
        a, e = divmod(row, 3)
        right.text(-0.1, 8.5 - row, f"(c, a, e) = (0, {a}, {e})", ha="right", va="center", fontsize=8)
    right.set_xlim(-2.2, 4.2)
    right.set_ylim(-0.6, 10.2)
    right.set_aspect("equal")
    right.axis("off")
    right.set_title("cols: one row per (c, a, e), one column per output (n, i, j)", fontsize=10)
    fig.text(
        0.5,
        0.03,
        "Pixels 5, 6, 9 and 10 are in all four windows, so each is copied into four columns; "
        "col2im adds all four back (+=).",
        ha="center",
        fontsize=9,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Draw the tutorial's diagrams.")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "tutorial"))
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    block_backward(os.path.join(args.out, "block_backward.png"))
    im2col_layout(os.path.join(args.out, "im2col_layout.png"))
    print(f"wrote block_backward.png and im2col_layout.png to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
