"""A :class:`Summary` as text, markdown or JSON; several summaries side by side in one table.

The report of one model has four parts: the per-layer table (to a chosen depth), the per-stage
table, the totals (torchsummary's lines) and the answers (blocks, weighted layers, parameters with
and without the classifier, trainable and frozen, MACs and FLOPs, activation memory). Several
models give one table of the answers, one column per model. Every format prints the same figures.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .record import MB, LayerRow, Summary
from .structure import StageRow, stage_table


def scaled(count: int) -> str:
    """3,616 -> '3.62 K'; 4,089,184,256 -> '4.09 G'."""
    for factor, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if count >= factor:
            return f"{count / factor:.2f} {unit}"
    return str(count)


def format_shape(shape: tuple) -> str:
    if shape and all(isinstance(s, tuple) for s in shape):
        return ", ".join(format_shape(s) for s in shape)
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _input(s: Summary) -> str:
    return "x".join(str(d) for d in s.input_shape)


# ------------------------------------------------------------------------------------------ answers


def answers(s: Summary) -> dict[str, Any]:
    """The answers as plain values (the JSON form); every other format is made from these."""
    st = s.structure
    return {
        "blocks_per_stage": list(st.blocks_per_stage),
        "blocks": st.blocks,
        "block_types": list(st.block_types),
        "residual": st.residual,
        "weighted_layers": st.weighted_layers,
        "weighted_layers_counted_as": st.weighted_layers_counted_as,
        "projection_shortcuts": st.projection_shortcuts,
        "shortcut_kinds": list(st.shortcut_kinds),
        "params": s.total_params,
        "params_without_classifier": s.params_without_classifier,
        "classifier": st.classifier,
        "classifier_layers": st.classifier_text,
        "classifier_params": st.classifier_params,
        "trainable_params": s.trainable_params,
        "frozen_params": s.non_trainable_params,
        "input_shape": list(s.input_shape),
        "macs": s.total_macs,
        "flops": s.total_flops,
        "batch": s.batch,
        "activation_bytes": s.activation_bytes,
        "activation_mb": None if s.activation_bytes is None else round(s.activation_bytes / MB, 2),
        "memory_method": None if s.memory is None else s.memory.method,
    }


def _blocks_text(a: dict[str, Any]) -> str:
    stages = "+".join(str(b) for b in a["blocks_per_stage"])
    return f"{stages} = {a['blocks']}" if len(a["blocks_per_stage"]) > 1 else stages


def _shortcut_note(a: dict[str, Any]) -> str:
    if not a["blocks"]:
        return ""
    if not a["residual"]:
        return "no shortcuts (a plain network)"
    n = a["projection_shortcuts"]
    if n:
        kinds = [k for k in a["shortcut_kinds"] if k.startswith("conv")]
        return (
            f"the {n} projection shortcut{'s' if n > 1 else ''} ({', '.join(kinds)}) "
            f"{'are' if n > 1 else 'is'} not counted, as in the paper"
        )
    return f"the shortcuts ({', '.join(a['shortcut_kinds'])}) have no weights"


def _memory_text(s: Summary) -> str:
    if s.memory is None:
        return "not measured (measure_memory=False)"
    return f"{s.memory.activation_bytes / MB:,.2f} MB (measured: {s.memory.method})"


def answer_lines(s: Summary) -> list[tuple[str, str]]:
    """(question, answer) pairs for one model."""
    a = answers(s)
    lines = []
    if a["blocks"]:
        kind = "residual blocks" if a["residual"] else "blocks (plain, no shortcuts)"
        lines.append((kind, f"{_blocks_text(a)} {' + '.join(a['block_types'])}"))
    note = _shortcut_note(a)
    lines.append(
        (
            "weighted layers",
            f"{a['weighted_layers']} = {a['weighted_layers_counted_as']}" + (f"; {note}" if note else ""),
        )
    )
    params = f"{a['params']:,}"
    if a["classifier"]:
        params += (
            f"; without the classifier {a['classifier']} ({a['classifier_layers']}: "
            f"{a['classifier_params']:,}): {a['params_without_classifier']:,}"
        )
    lines.append(("parameters", params))
    lines.append(("trainable", f"{a['trainable_params']:,}; frozen (requires_grad=False): {a['frozen_params']:,}"))
    lines.append(
        (
            "MACs",
            f"{a['macs']:,} ({scaled(a['macs'])}) at {_input(s)}; "
            f"FLOPs (2 x MACs): {a['flops']:,} ({scaled(a['flops'])})",
        )
    )
    lines.append((f"activation memory, training step at batch {s.batch}", _memory_text(s)))
    return lines


def comparison_rows(summaries: Sequence[Summary]) -> list[tuple[str, list[str]]]:
    """The side-by-side table: (row label, one cell per model)."""
    table: list[tuple[str, list[str]]] = []

    def row(label: str, cell) -> None:
        table.append((label, [cell(s, answers(s)) for s in summaries]))

    row("input", lambda s, a: f"{_input(s)} {s.dtype.name}")
    row("blocks per stage", lambda s, a: _blocks_text(a) if a["blocks"] else "-")
    row("block type", lambda s, a: " + ".join(a["block_types"]) or "-")
    row(
        "shortcuts",
        lambda s, a: "none (plain)" if a["blocks"] and not a["residual"] else ", ".join(a["shortcut_kinds"]) or "-",
    )
    row("weighted layers", lambda s, a: str(a["weighted_layers"]))
    row("  counted as", lambda s, a: a["weighted_layers_counted_as"])
    row("  projection shortcuts, not counted", lambda s, a: str(a["projection_shortcuts"]))
    row("parameters", lambda s, a: f"{a['params']:,}")
    row("  without the classifier", lambda s, a: f"{a['params_without_classifier']:,}")
    row(
        "  classifier",
        lambda s, a: (
            f"{a['classifier']}: {a['classifier_layers']} ({a['classifier_params']:,})" if a["classifier"] else "-"
        ),
    )
    row("  trainable", lambda s, a: f"{a['trainable_params']:,}")
    row("  frozen", lambda s, a: f"{a['frozen_params']:,}")
    row("MACs", lambda s, a: f"{a['macs']:,} ({scaled(a['macs'])})")
    row("FLOPs (2 x MACs)", lambda s, a: f"{a['flops']:,} ({scaled(a['flops'])})")
    row(
        "activation memory, training step (MB)",
        lambda s, a: "not measured" if a["activation_bytes"] is None else f"{a['activation_mb']:,.2f}",
    )
    row(
        "  BatchNorm during the measurement",
        lambda s, a: (
            "-"
            if s.memory is None
            else "batch statistics"
            if not s.memory.batchnorm_in_eval
            else f"{len(s.memory.batchnorm_in_eval)} of {s.memory.batchnorm_layers} in eval mode "
            "(one value per channel)"
        ),
    )
    return table


# ------------------------------------------------------------------------------------------ text


def _columns(headers: Sequence[str], body: Sequence[Sequence[str]], left: int = 1) -> tuple[list[str], int]:
    """Lines of an aligned table (the first ``left`` columns left-aligned, the rest right-aligned)."""
    widths = [max([len(h), *(len(line[i]) for line in body)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return [line(headers), *(line(cells) for cells in body)], sum(widths) + 2 * (len(widths) - 1)


def _layer_cells(row: LayerRow) -> list[str]:
    return [f"{row.name or '(model)'} ({row.type})", format_shape(row.output_shape), f"{row.params:,}", f"{row.macs:,}"]


def _stage_cells(row: StageRow) -> list[str]:
    return [
        row.name,
        format_shape(row.output_shape),
        str(row.blocks) if row.blocks else "-",
        f"{row.params:,}",
        f"{row.macs:,}",
    ]


def text(s: Summary, depth: int | None = None) -> str:
    """The report of one model: per-layer table, per-stage table, totals, answers."""
    layer_lines, width = _columns(
        ("Layer (type)", "Output shape", "Params", "MACs"), [_layer_cells(r) for r in s.table(depth)]
    )
    stages = stage_table(s.calls, s.structure)
    stage_lines, stage_width = _columns(
        ("Stage", "Output shape", "Blocks", "Params", "MACs"), [_stage_cells(r) for r in stages]
    )
    width = max(width, stage_width if stages else 0)
    batch = s.batch
    activations = "not measured (measure_memory=False)" if s.activation_bytes is None else f"{s.activations_mb:,.2f}"
    title = f"{s.label} = {s.model_name}" if s.label else s.model_name
    out = [
        f"{title}: input {s.input_shape} {s.dtype.name}",
        "=" * width,
        layer_lines[0],
        "=" * width,
        *layer_lines[1:],
        "=" * width,
    ]
    if stages:
        out += [stage_lines[0], "-" * width, *stage_lines[1:], "=" * width]
    out += [
        f"Total params: {s.total_params:,}",
        f"Trainable params: {s.trainable_params:,}",
        f"Non-trainable params: {s.non_trainable_params:,}",
        f"Weighted layers (conv + linear on the main path): {s.weighted_layers}",
        f"Total MACs (multiply-accumulates, conv + linear, batch of {batch}): {s.total_macs:,} "
        f"({scaled(s.total_macs)})",
        f"Total FLOPs (= 2 x MACs, batch of {batch}): {s.total_flops:,} ({scaled(s.total_flops)})",
        "-" * width,
        f"Input size (MB): {s.input_mb:,.2f}",
        f"Params + buffers size (MB): {s.params_mb:,.2f}",
        f"Activations held for backward (MB, measured): {activations}",
        f"Total size (MB): {s.total_mb:,.2f}",
        "-" * width,
        f"Answers ({s.name}, input {_input(s)}):",
        *(f"  {question}: {answer}" for question, answer in answer_lines(s)),
    ]
    return "\n".join(out)


def comparison_text(summaries: Sequence[Summary]) -> str:
    rows = comparison_rows(summaries)
    lines, width = _columns(["", *(s.name for s in summaries)], [[label, *cells] for label, cells in rows])
    return "\n".join([lines[0], "-" * width, *lines[1:]])


# ------------------------------------------------------------------------------------------ markdown


def _markdown_table(headers: Sequence[str], body: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    def escape(cell: str) -> str:
        return cell.replace("|", "\\|")

    align = ["---" if i < left else "---:" for i in range(len(headers))]
    return [
        "| " + " | ".join(escape(h) for h in headers) + " |",
        "|" + "|".join(align) + "|",
        *("| " + " | ".join(escape(c) for c in cells) + " |" for cells in body),
    ]


def markdown(s: Sequence[Summary] | Summary, depth: int | None = None) -> str:
    """One model: its tables and answers as markdown; several: the side-by-side table."""
    if not isinstance(s, Summary):
        rows = comparison_rows(s)
        return "\n".join(
            _markdown_table(["", *(m.name for m in s)], [[label.strip(), *cells] for label, cells in rows])
        )
    out = [f"### {s.name}: input {_input(s)} {s.dtype.name}", ""]
    out += _markdown_table(
        ["Layer", "Type", "Output shape", "Params", "MACs"],
        [
            [r.name or "(model)", r.type, format_shape(r.output_shape), f"{r.params:,}", f"{r.macs:,}"]
            for r in s.table(depth)
        ],
        left=2,
    )
    stages = stage_table(s.calls, s.structure)
    if stages:
        out += [
            "",
            *_markdown_table(["Stage", "Output shape", "Blocks", "Params", "MACs"], [_stage_cells(r) for r in stages]),
        ]
    out += ["", *_markdown_table(["Question", "Answer"], answer_lines(s), left=2)]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ JSON


def as_dict(s: Summary, depth: int | None = None) -> dict[str, Any]:
    """Everything in the report, as JSON-able values."""
    return {
        "model": s.name,
        "class": s.model_name,
        "input_shape": list(s.input_shape),
        "dtype": s.dtype.name,
        "layers": [
            {"name": r.name, "type": r.type, "output_shape": r.output_shape, "params": r.params, "macs": r.macs}
            for r in s.table(depth)
        ],
        "stages": [
            {
                "stage": r.name,
                "members": list(r.members),
                "output_shape": r.output_shape,
                "blocks": r.blocks,
                "params": r.params,
                "macs": r.macs,
            }
            for r in stage_table(s.calls, s.structure)
        ],
        "input_bytes": s.input_bytes,
        "param_bytes": s.param_bytes,
        "answers": answers(s),
    }


def to_json(summaries: Sequence[Summary], depth: int | None = None) -> str:
    """``{"models": [one as_dict per model]}``."""
    return json.dumps({"models": [as_dict(s, depth) for s in summaries]}, indent=1)
