"""Watch gradients flow through a ResNet: ``GradientFlow`` records one training step.

A residual block computes ``y = relu(F(x) + S(x))`` with F the main (residual) branch and S the
shortcut (the identity, option A's subsample-and-pad, or a 1x1 conv projection). Backward, with
``g = dL/dy`` arriving at the block output::

    g_sum      = relu_out.backward(g)        gradient at the (+) node, (N, P, OH, OW)
    dx_main    = F.backward(g_sum)           through conv2, bn2, relu1, bn1, conv1: (N, C, H, W)
    dx_short   = S.backward(g_sum)           the identity passes g_sum on unchanged
    dx         = dx_main + dx_short          x forked in forward, so its gradients add

In a plain block there is no S: ``dx = dx_main``. Every layer of F can shrink the gradient; the
shortcut term reaches x without passing any of them. Stacked over many blocks, the identity
shortcuts give the gradient a path from the loss to the first layer that crosses no weight layer
of any identity block: only each block's output ReLU (this post-activation ResNet gates the
shortcut path by it; pre-activation ResNets remove that gate) and, at a change of shape, the
shortcut's own layer (option A keeps only the strided pixels and drops the padded channels' part;
a projection multiplies by its 1x1 weights and BatchNorm). That is why gradients survive in a deep
ResNet and can fade (or explode) in a plain network.

``GradientFlow`` attaches backward hooks (``Module.register_backward_hook``) to every block, its
first main-branch layer (``conv1``), its shortcut and its ``relu_out`` (which each block declares:
``npresnet.models.ResidualBlock``), and records the norms of
those arrays. After ``optimizer.step()`` it also records, per parameter, the gradient norm and the
update/weight ratio ``||w_new - w_old|| / ||w_old||`` (a healthy step is around 1e-3; much larger
means the learning rate is too high for that layer, much smaller that the layer barely learns)::

    from npresnet.inspect import GradientFlow
    flow = GradientFlow(model)
    with flow:                                       # hooks on; removed on exit
        loss = flow.step(x, y, criterion, optimizer) # zero_grad, forward, backward, optimizer.step()
    print(flow.table())
    flow.plot("flow.png")                            # gradient norm against depth, both branches

Norms are Frobenius norms of the whole batch's array, computed in float64.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from .backend import get_array_module
from .models.blocks import ResidualBlock
from .nn import Module
from .plotting import pyplot, save_figure

__all__ = ["BlockFlow", "GradientFlow", "ParamFlow", "norm", "plot_gradient_flow"]


def norm(array: Any) -> float:
    """Frobenius norm of any array (NumPy or CuPy), accumulated in float64."""
    xp = get_array_module(array)
    flat = array.reshape(-1).astype(xp.float64)
    return float(xp.sqrt((flat * flat).sum()))


@dataclasses.dataclass
class BlockFlow:
    """Gradient norms at one block, for the last backward pass.

    ``out``: ||dL/dy|| arriving at the block output. ``at_sum``: ||dL/d(+)|| after ``relu_out``.
    ``main``: ||dx_main||, the part that reached the input through the residual branch.
    ``shortcut``: ||dx_short||, the part through the shortcut (0 for a plain block).
    ``input``: ||dx|| = ||dx_main + dx_short||, the block's input gradient.
    """

    name: str
    depth: int  # 1 for the block nearest the input
    residual: bool
    out: float = float("nan")
    at_sum: float = float("nan")
    main: float = float("nan")
    shortcut: float = float("nan")
    input: float = float("nan")

    @property
    def gain(self) -> float:
        """||dx|| / ||dL/dy||: how much the block amplifies (>1) or shrinks (<1) the gradient."""
        return self.input / self.out if self.out else float("nan")


@dataclasses.dataclass
class ParamFlow:
    """One parameter after ``optimizer.step()``: gradient norm and update/weight ratio."""

    name: str
    shape: tuple[int, ...]
    weight: float  # ||w|| before the step
    grad: float  # ||dL/dw|| (the gradient the step used, before weight decay)
    update: float = float("nan")  # ||w_new - w_old||
    ratio: float = float("nan")  # update / weight


class Criterion(Protocol):
    """A loss module such as ``nn.CrossEntropyLoss``: ``criterion(logits, target)``, then ``backward()``."""

    def __call__(self, logits: Any, target: Any) -> Any: ...

    def backward(self) -> Any: ...


def _find_blocks(model: Module) -> list[tuple[str, ResidualBlock]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, ResidualBlock)]


class GradientFlow:
    """Records gradient norms per block and per parameter for a training step (see the module docstring).

    Args:
        model: any Module holding blocks that declare their branches (``npresnet.models.ResidualBlock``:
            ``CifarBlock``, ``BasicBlock``, ``Bottleneck``).
        blocks: the names of the blocks to watch (default: every block, in forward order).
        keep_arrays: also keep the recorded gradient arrays in ``self.arrays[block name]`` (a dict with
            keys ``out, at_sum, main, shortcut, input``), for tests and for stepping through by hand.

    Use as a context manager (or ``attach()`` / ``detach()``). The records describe the last
    backward pass run while attached; ``param_flows`` the last ``optimizer_step``.
    """

    def __init__(self, model: Module, blocks: Sequence[str] | None = None, keep_arrays: bool = False) -> None:
        if not isinstance(model, Module):
            raise TypeError(f"GradientFlow watches an npresnet Module, got {type(model).__name__}")
        self.model, self.keep_arrays = model, keep_arrays
        found = _find_blocks(model)
        if blocks is not None:
            modules = dict(model.named_modules())
            missing = [b for b in blocks if b not in modules]
            if missing:
                raise ValueError(f"no module named {', '.join(map(repr, missing))} in {type(model).__name__}")
            named = [(b, modules[b]) for b in blocks]
            not_blocks = [f"{b!r} ({type(m).__name__})" for b, m in named if not isinstance(m, ResidualBlock)]
            if not_blocks:
                raise TypeError(
                    f"GradientFlow watches blocks that declare their branches (a ResidualBlock such as "
                    f"CifarBlock, BasicBlock, Bottleneck); not one: {', '.join(not_blocks)}"
                )
            found = [(b, m) for b, m in named if isinstance(m, ResidualBlock)]
        if not found:
            raise ValueError(
                f"{type(model).__name__} holds no residual or plain block (a ResidualBlock: CifarBlock, "
                "BasicBlock, Bottleneck); a block of your own can subclass npresnet.models.ResidualBlock "
                "and declare its branches"
            )
        self._blocks = found
        self.block_flows: list[BlockFlow] = [BlockFlow(name, i + 1, b.is_residual) for i, (name, b) in enumerate(found)]
        self.param_flows: list[ParamFlow] = []
        self.arrays: dict[str, dict[str, Any]] = {}
        self.loss: float | None = None
        self._handles: list[Any] = []

    # ------------------------------------------------------------------ hooks
    def _record(self, record: BlockFlow, key: str, array: Any) -> None:
        setattr(record, key, norm(array))
        if self.keep_arrays:
            self.arrays.setdefault(record.name, {})[key] = array

    def attach(self) -> GradientFlow:
        """Register the backward hooks (idempotent)."""
        if self._handles:
            return self
        for record, (_, block) in zip(self.block_flows, self._blocks):
            first, shortcut, residual = block.main_branch_entry, block.shortcut_branch, block.is_residual

            def on_block(m: Module, grad_input: tuple, grad_output: tuple, r: BlockFlow = record) -> None:
                self._record(r, "out", grad_output[0])
                self._record(r, "input", grad_input[0])
                if not r.residual:
                    self._record(r, "shortcut", get_array_module(grad_input[0]).zeros_like(grad_input[0]))

            def on_sum(
                m: Module,
                grad_input: tuple,
                grad_output: tuple,
                r: BlockFlow = record,
                identity: bool = residual and shortcut is None,
            ) -> None:
                self._record(r, "at_sum", grad_input[0])
                if identity:  # BasicBlock without downsample: (+) hands g_sum to x unchanged
                    self._record(r, "shortcut", grad_input[0])

            def on_main(m: Module, grad_input: tuple, grad_output: tuple, r: BlockFlow = record) -> None:
                self._record(r, "main", grad_input[0])

            def on_shortcut(m: Module, grad_input: tuple, grad_output: tuple, r: BlockFlow = record) -> None:
                self._record(r, "shortcut", grad_input[0])

            self._handles += [
                block.register_backward_hook(on_block),
                block.output_activation.register_backward_hook(on_sum),
                first.register_backward_hook(on_main),
            ]
            if shortcut is not None:
                self._handles.append(shortcut.register_backward_hook(on_shortcut))
        return self

    def detach(self) -> None:
        """Remove every hook this recorder registered."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> GradientFlow:
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    # ------------------------------------------------------------------ one step
    def optimizer_step(self, optimizer: Any) -> list[ParamFlow]:
        """Run ``optimizer.step()`` and record each parameter's gradient norm and update/weight ratio.

        Call it where the training loop would call ``optimizer.step()``, after the backward pass.
        """
        named = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        before = {name: p.data.copy() for name, p in named}
        flows = [
            ParamFlow(name, p.shape, norm(p.data), norm(p.grad) if p.grad is not None else 0.0) for name, p in named
        ]
        optimizer.step()
        for flow, (name, p) in zip(flows, named):
            flow.update = norm(p.data - before[name])
            flow.ratio = flow.update / flow.weight if flow.weight else float("nan")
        self.param_flows = flows
        return flows

    def step(self, x: Any, y: Any, criterion: Criterion, optimizer: Any) -> float:
        """One full training step with the hooks on: zero_grad, forward, loss, backward, optimizer step.

        Returns the loss. The model must be in training mode for a training step (it is not changed).
        """
        attached = bool(self._handles)
        self.attach()
        try:
            optimizer.zero_grad()
            loss = float(criterion(self.model(x), y))
            self.model.backward(criterion.backward())
        finally:
            if not attached:
                self.detach()
        self.loss = loss
        self.optimizer_step(optimizer)
        return loss

    # ------------------------------------------------------------------ reporting
    def to_dict(self) -> dict[str, Any]:
        """Plain numbers (JSON-ready): ``{"loss", "blocks": [...], "params": [...]}``."""
        return {
            "loss": self.loss,
            "blocks": [dataclasses.asdict(b) for b in self.block_flows],
            "params": [{**dataclasses.asdict(p), "shape": list(p.shape)} for p in self.param_flows],
        }

    def table(self, params: bool = True) -> str:
        """The block table (and the parameter table) as text."""
        return format_table(self.to_dict(), params=params)

    def __str__(self) -> str:
        return self.table()

    def plot(self, path: str | None = None, title: str | None = None) -> Any:
        """Gradient norm against depth (see ``plot_gradient_flow``); returns the matplotlib figure."""
        return plot_gradient_flow({title or type(self.model).__name__: self.to_dict()}, path)


def format_table(flow: Mapping[str, Any], params: bool = True) -> str:
    """Text tables of a ``GradientFlow.to_dict()`` record."""
    head = (
        f"{'block':<10} {'kind':<8} {'||dL/dy||':>10} {'||d(+)||':>10} {'||dx main||':>11} "
        f"{'||dx short||':>12} {'||dx||':>10} {'gain':>6}"
    )
    lines = [head, "-" * len(head)]
    for b in flow["blocks"]:
        gain = b["input"] / b["out"] if b["out"] else float("nan")
        lines.append(
            f"{b['name']:<10} {'residual' if b['residual'] else 'plain':<8} {b['out']:>10.3e} "
            f"{b['at_sum']:>10.3e} {b['main']:>11.3e} {b['shortcut']:>12.3e} {b['input']:>10.3e} "
            f"{gain:>6.2f}"
        )
    if params and flow.get("params"):
        width = max(len(p["name"]) for p in flow["params"])
        phead = f"{'parameter':<{width}} {'shape':<16} {'||w||':>10} {'||dL/dw||':>10} {'||dw||/||w||':>12}"
        lines += ["", phead, "-" * len(phead)]
        for p in flow["params"]:
            shape = "x".join(str(s) for s in p["shape"])
            lines.append(
                f"{p['name']:<{width}} {shape:<16} {p['weight']:>10.3e} {p['grad']:>10.3e} {p['ratio']:>12.3e}"
            )
    return "\n".join(lines)


def weight_ratios(flow: Mapping[str, Any]) -> list[tuple[str, float]]:
    """(name, update/weight ratio) of every weight matrix or kernel (ndim >= 2), in forward order."""
    return [(p["name"], p["ratio"]) for p in flow.get("params", []) if len(p["shape"]) >= 2]


def plot_gradient_flow(flows: Mapping[str, Any], path: str | None = None, suptitle: str | None = None) -> Any:
    """One column per network: gradient norm (log scale) against block depth, both branches.

    ``flows`` maps a title to a ``GradientFlow`` or its ``to_dict()``. Top row, per block: the
    gradient arriving at the block output ||dL/dy||, the part reaching the block input through the
    main branch, the part through the shortcut, and the block's input gradient ||dx|| (their sum;
    in a plain block it is the main branch alone). Bottom row (when the records hold an optimizer
    step): the update/weight ratio ||dw||/||w|| of every conv and fc weight, input to output.
    Rows share the y axis, so plain and residual networks can be compared. Saves to ``path`` if given.
    """
    plt = pyplot("drawing gradient-flow figures (the tables and to_dict() work without it)")
    records = {title: (f.to_dict() if isinstance(f, GradientFlow) else f) for title, f in flows.items()}
    with_params = any(weight_ratios(r) for r in records.values())
    rows = 2 if with_params else 1
    figure, axes = plt.subplots(
        rows, len(records), figsize=(4.4 * len(records), 3.6 * rows + 0.6), sharey="row", squeeze=False
    )
    for column, (title, record) in enumerate(records.items()):
        ax = axes[0][column]
        blocks = record["blocks"]
        depth = [b["depth"] for b in blocks]
        residual = any(b["residual"] for b in blocks)
        ax.plot(depth, [b["out"] for b in blocks], "k:", label="||dL/dy|| arriving at the block output")
        if residual:
            ax.plot(depth, [b["main"] for b in blocks], "o-", color="tab:red", ms=3, label="||dx|| via the main branch")
            ax.plot(
                depth, [b["shortcut"] for b in blocks], "s-", color="tab:blue", ms=3, label="||dx|| via the shortcut"
            )
            ax.plot(
                depth,
                [b["input"] for b in blocks],
                "-",
                color="tab:green",
                lw=2,
                alpha=0.6,
                label="||dx|| at the block input (main + shortcut)",
            )
        else:
            ax.plot(
                depth,
                [b["input"] for b in blocks],
                "o-",
                color="tab:red",
                ms=3,
                label="||dx|| via the main branch (plain: all of it)",
            )
        ax.set(yscale="log", xlabel="block (1 = nearest the input)", title=title)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        if with_params:
            ratios = weight_ratios(record)
            ax = axes[1][column]
            ax.plot(range(1, len(ratios) + 1), [r for _, r in ratios], "o-", color="tab:purple", ms=3)
            ax.set(yscale="log", xlabel="weight layer (conv ..., fc), input to output")
            ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("gradient norm (whole batch)")
    if with_params:
        axes[1][0].set_ylabel("update / weight  ||dw|| / ||w||")
    if suptitle:
        figure.suptitle(suptitle)
    figure.tight_layout()
    if path is not None:
        save_figure(figure, path, dpi=100)
    return figure


def summarize(flow: Mapping[str, Any]) -> dict[str, float]:
    """Gradient norm at the first and last block inputs and their ratio (first / last)."""
    blocks = flow["blocks"]
    first, last = blocks[0]["input"], blocks[-1]["input"]
    return {
        "first_block_input": first,
        "last_block_input": last,
        "first_over_last": first / last if last else float("nan"),
    }
