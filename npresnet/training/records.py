"""What a run leaves besides its checkpoint: ``metrics.csv``, ``metrics.json`` and the curves plot.

``history`` is the list of per-epoch rows the trainer keeps (``epoch``, ``step``, ``lr``,
``train_loss``, ``train_acc``, ``epoch_time_s``, ``images_per_s``, ``test_loss``, ``test_acc``,
``eval_time_s``).

Every file is written atomically (``npresnet.atomic_write``), and each is derived from the history
alone, which the checkpoint holds: resuming a run rewrites them (``Trainer.resume``).
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any

from ..atomic_write import atomic_write_text
from ..plotting import pyplot, save_figure
from .config import TrainConfig

__all__ = ["plot_history", "write_metrics"]


def write_metrics(out_dir: str, history: list[dict[str, Any]], config: TrainConfig) -> None:
    """``metrics.csv`` (one row per epoch) and ``metrics.json`` (config, history, summary), atomically."""
    if not history:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    summary = {
        "config": config.to_dict(),
        "history": history,
        "final_test_acc": history[-1]["test_acc"],
        "best_test_acc": max(r["test_acc"] for r in history),
        "train_time_s": sum(r["epoch_time_s"] + r["eval_time_s"] for r in history),
    }
    for name, text in (("metrics.csv", buffer.getvalue()), ("metrics.json", json.dumps(summary, indent=1))):
        atomic_write_text(os.path.join(out_dir, name), text)


def plot_history(history: list[dict[str, Any]], path: str, title: str = "") -> None:
    """Loss and accuracy curves (train and test) per epoch, saved to ``path`` (needs matplotlib)."""
    plt = pyplot("--plot")
    epochs = [r["epoch"] for r in history]
    figure, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train")
    ax_loss.plot(epochs, [r["test_loss"] for r in history], label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", yscale="log", title="loss")
    ax_acc.plot(epochs, [100 * r["train_acc"] for r in history], label="train")
    ax_acc.plot(epochs, [100 * r["test_acc"] for r in history], label="test")
    best = max(history, key=lambda r: r["test_acc"])
    ax_acc.set(
        xlabel="epoch",
        ylabel="accuracy (%)",
        title=f"accuracy (final test {100 * history[-1]['test_acc']:.2f}%, best {100 * best['test_acc']:.2f}%)",
    )
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    save_figure(figure, path, dpi=110)
