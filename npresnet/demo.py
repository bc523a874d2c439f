"""A short tour of npresnet: ResNet's basic block, forward and backward by hand, checked.

Run ``python -m npresnet.demo``. It

1. builds the basic residual block from ``npresnet.nn`` layers (conv-bn-relu-conv-bn, plus a
   shortcut, relu after the add),
2. runs forward and backward by hand on a float64 batch and prints shapes and gradient norms,
3. checks that backward with ``npresnet.gradcheck``: one random direction per array on this block,
   every single element on a tiny one,
4. if PyTorch is installed, builds the same block in torch with the same weights and compares the
   output and the gradients.

``main()`` returns 0 when every check passes (the exit status of ``python -m npresnet.demo``).
``--input-shape N,C,H,W`` and ``--seed`` change the batch and the draws; ``--help`` lists them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import nn
from .commands import EXIT_OPTIONS, command_parser, shape_type
from .gradcheck import gradcheck

TORCH_TOLERANCE = 1e-10  # float64: max |ours - torch| / max |torch|


class BasicBlock(nn.Module):
    """ResNet's basic block. Input (N, C, H, W) -> output (N, O, H/s, W/s)::

        x --> conv3x3(stride s) -> bn -> relu -> conv3x3 -> bn --> (+) -> relu -> y
          \\---------- shortcut: identity, or conv1x1(stride s) -> bn -----/

    There is no autograd: backward runs the layers' backward in reverse order. x feeds both
    branches, so dL/dx is the *sum* of the two branch gradients.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, rng: np.random.Generator | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False, rng=rng)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False, rng=rng)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module
        if stride != 1 or in_channels != out_channels:  # the shapes differ: project x
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False, rng=rng),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()  # each ReLU keeps its own cache

    def forward(self, x):
        main = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(main + self.shortcut(x))

    def backward(self, dout):
        dsum = self.relu2.backward(dout)  # the add passes dsum to both terms
        dmain = self.conv1.backward(
            self.bn1.backward(self.relu1.backward(self.conv2.backward(self.bn2.backward(dsum))))
        )
        return dmain + self.shortcut.backward(dsum)


def make_block(in_channels: int, out_channels: int, stride: int, seed: int) -> BasicBlock:
    """A float64 block with random (not 1 and 0) BatchNorm scales and shifts."""
    rng = np.random.default_rng(seed)
    block = BasicBlock(in_channels, out_channels, stride, rng).to(np.float64)
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d) and m.weight is not None and m.bias is not None:
            m.weight.data[...] = rng.uniform(0.5, 1.5, m.num_features)
            m.bias.data[...] = rng.standard_normal(m.num_features)
    return block


def torch_block(block: BasicBlock):
    """The same block in PyTorch, with a copy of ``block``'s parameters and buffers."""
    import torch

    class TorchBasicBlock(torch.nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, project: bool) -> None:
            super().__init__()
            self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
            self.bn1 = torch.nn.BatchNorm2d(cout)
            self.conv2 = torch.nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn2 = torch.nn.BatchNorm2d(cout)
            self.shortcut = (
                torch.nn.Sequential(
                    torch.nn.Conv2d(cin, cout, 1, stride=stride, bias=False), torch.nn.BatchNorm2d(cout)
                )
                if project
                else torch.nn.Identity()
            )

        def forward(self, x):
            main = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(main + self.shortcut(x))

    conv1 = block.conv1
    reference = TorchBasicBlock(
        conv1.in_channels, conv1.out_channels, conv1.stride[0], isinstance(block.shortcut, nn.Sequential)
    ).double()
    reference.load_state_dict({key: torch.from_numpy(np.array(value)) for key, value in block.state_dict().items()})
    return reference.train(block.training)


def max_rel_error(ours: Any, reference: Any) -> float:
    """max |ours - reference| / max |reference|."""
    return float(np.max(np.abs(ours - reference)) / max(np.max(np.abs(reference)), 1e-300))


def compare_with_torch(block: BasicBlock, x: np.ndarray, dy: np.ndarray, y: np.ndarray, dx: np.ndarray) -> bool:
    """Run the same block in torch (if installed); print and check the worst relative errors."""
    try:
        import torch
    except ImportError:
        print("\n4. PyTorch comparison skipped: torch is not installed (pip install torch to compare).")
        return True
    reference = torch_block(block)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = reference(xt)
    yt.backward(torch.from_numpy(dy))
    assert xt.grad is not None
    errors = {"output y": max_rel_error(y, yt.detach().numpy()), "dL/dx": max_rel_error(dx, xt.grad.numpy())}
    torch_params = dict(reference.named_parameters())
    for name, p in block.named_parameters():
        errors[f"dL/d {name}"] = max_rel_error(p.grad, torch_params[name].grad.numpy())
    print(
        f"\n4. The same block in PyTorch {torch.__version__}, same weights, same x and dy "
        "(max |ours - torch| / max |torch|):"
    )
    for what, err in errors.items():
        print(f"   {what:<24} {err:.1e}")
    ok = max(errors.values()) <= TORCH_TOLERANCE
    print(f"   PyTorch agrees to {max(errors.values()):.1e}: " + ("ok" if ok else f"FAILED (> {TORCH_TOLERANCE:g})"))
    return ok


def parser():
    p = command_parser(
        "demo",
        "A short tour: ResNet's basic block (C -> 2C channels, stride 2, projection shortcut), its forward "
        "and backward by hand on a float64 batch, a gradient check of that backward, and the same block "
        "in PyTorch (if installed) with the same weights.",
        examples=["python -m npresnet.demo", "python -m npresnet.demo --input-shape 2,3,9,9 --seed 7"],
        exit_status=["0  every check passed", "1  a check failed (the table above says which)", EXIT_OPTIONS],
    )
    p.add_argument(
        "--input-shape",
        type=shape_type(4),
        default=(4, 8, 12, 10),
        metavar="N,C,H,W",
        help="the batch x the block takes (default 4,8,12,10)",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the weights; seed + 1 the batch and dy (default 0)")
    return p


def main(argv: Sequence[str] = ()) -> int:
    """The tour; 0 when every check passes. ``argv``: the command's options (none: the defaults)."""
    args = parser().parse_args(list(argv))
    print("npresnet demo: ResNet's basic block, forward and backward by hand\n")
    n, c, h, w = args.input_shape
    block = make_block(c, 2 * c, stride=2, seed=args.seed)
    rng = np.random.default_rng(args.seed + 1)
    x = rng.standard_normal((n, c, h, w))  # (N, C, H, W), float64
    print(f"1. The block (projection shortcut, stride 2):\n{block}\n")

    y = block(x)  # each layer keeps what its backward needs
    dy = rng.standard_normal(y.shape)  # a random upstream gradient dL/dy
    dx = block.backward(dy)  # dL/dx; parameters' .grad filled in
    print("2. Forward and backward by hand:")
    print(f"   x {x.shape} {x.dtype} -> y {y.shape}; dy random, dx {dx.shape}")
    print(f"   {'gradient':<24} {'shape':<16} norm")
    print(f"   {'dL/dx':<24} {str(dx.shape):<16} {np.linalg.norm(dx):.4f}")
    for name, p in block.named_parameters():
        assert p.grad is not None  # backward filled every .grad
        print(f"   {'dL/d ' + name:<24} {str(p.shape):<16} {np.linalg.norm(p.grad):.4f}")

    print("\n3. Gradient check of the hand-written backward against finite differences of L = sum(v * y):")
    directional = gradcheck(block, x, mode="directional", raise_exception=False)
    print(f"   on this block, one random direction per array:\n{_indent(directional)}")
    tiny = make_block(2, 2, stride=1, seed=2)
    x_tiny = np.random.default_rng(3).standard_normal((2, 2, 4, 4))
    full = gradcheck(tiny, x_tiny, mode="full", raise_exception=False)
    print(f"   on a tiny block (identity shortcut, x {x_tiny.shape}), every element:\n{_indent(full)}")

    torch_ok = compare_with_torch(block, x, dy, y, dx)
    ok = directional.passed and full.passed and torch_ok
    print("\ndemo OK: every check passed" if ok else "\ndemo FAILED: see above")
    return 0 if ok else 1


def _indent(report) -> str:
    return "\n".join("     " + line for line in str(report).splitlines())


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
