"""python -m npresnet.learn: the skeletons, the grader, the classic mistakes, the commands.

Every check runs the real grader on a real file in a temporary folder: npresnet's own solution,
a differently written correct one, a copy of the solution with one classic mistake planted, or a
backward that returns zeros, a constant or nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from npresnet.gradcheck.diagnosis import diagnose
from npresnet.learn import EXERCISES, get, grade
from npresnet.learn.cli import main, skeleton, solution
from npresnet.learn.grader import reference_gradients

NAMES = [e.name for e in EXERCISES]


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(text, encoding="utf-8")
    return str(path)


def planted(name: str, old: str, new: str) -> str:
    text = solution(get(name))
    assert old in text, f"the solution of {name} no longer contains {old!r}: update the planted mistake"
    return text.replace(old, new)


@pytest.mark.parametrize("name", NAMES)
def test_an_untouched_skeleton_is_not_written_yet(tmp_path, name):
    result = grade(get(name), write(tmp_path, name, skeleton(get(name))))
    assert result.status == "not written" and "not written yet" in result.message
    assert "TODO" in skeleton(get(name)) and "Check with" in skeleton(get(name))


@pytest.mark.parametrize("name", NAMES)
def test_npresnets_solution_passes(tmp_path, name):
    result = grade(get(name), write(tmp_path, name, solution(get(name))))
    assert result.passed, result.message


@pytest.mark.parametrize("name", NAMES)
def test_no_case_is_vacuous(name):
    """Every gradient of every case is far from zero: a backward returning zeros cannot pass any of
    them (an upstream gradient drawn from the inputs' own stream once made BatchNorm's dx zero)."""
    exercise = get(name)
    for number in range(1, len(exercise.cases) + 1):
        _, expected = reference_gradients(exercise, number)
        for grad, values in expected.items():
            assert np.abs(values).max() > 1e-2, f"{name} case {number}: {grad} is ~0"


# Correct, but written another way: other loop orders, einsum, pooling without np.mean/np.max slices.
OTHER_WAYS = {
    "linear": """
import numpy as np
def linear_forward(x, w, b):
    return np.einsum("nd,md->nm", x, w) + b, (x, w)
def linear_backward(dy, cache):
    x, w = cache
    return np.einsum("nm,md->nd", dy, w), np.einsum("nm,nd->md", dy, x), dy.sum(0)
""",
    "avgpool": """
import numpy as np
def avgpool_forward(x, k, s):
    N, C, H, W = x.shape
    OH, OW = (H - k) // s + 1, (W - k) // s + 1
    y = np.zeros((N, C, OH, OW), x.dtype)
    for a in range(k):            # loop over the window offsets, not the output positions
        for b in range(k):
            y += x[:, :, a : a + s * (OH - 1) + 1 : s, b : b + s * (OW - 1) + 1 : s]
    return y / (k * k), (x.shape, k, s)
def avgpool_backward(dy, cache):
    (N, C, H, W), k, s = cache
    OH, OW = dy.shape[2:]
    dx = np.zeros((N, C, H, W), dy.dtype)
    for a in range(k):
        for b in range(k):
            dx[:, :, a : a + s * (OH - 1) + 1 : s, b : b + s * (OW - 1) + 1 : s] += dy / (k * k)
    return dx
""",
    "maxpool": """
import numpy as np
def maxpool_forward(x, k, s):
    N, C, H, W = x.shape
    OH, OW = (H - k) // s + 1, (W - k) // s + 1
    y = np.empty((N, C, OH, OW), x.dtype)
    where = np.empty((N, C, OH, OW, 2), int)
    for n in range(N):
        for c in range(C):
            for i in range(OH):
                for j in range(OW):
                    best = (0, 0)
                    for a in range(k):
                        for b in range(k):
                            if x[n, c, i*s + a, j*s + b] > x[n, c, i*s + best[0], j*s + best[1]]:
                                best = (a, b)
                    y[n, c, i, j] = x[n, c, i*s + best[0], j*s + best[1]]
                    where[n, c, i, j] = (i*s + best[0], j*s + best[1])
    return y, (x.shape, where)
def maxpool_backward(dy, cache):
    shape, where = cache
    dx = np.zeros(shape, dy.dtype)
    for n, c, i, j in np.ndindex(dy.shape):
        h, w = where[n, c, i, j]
        dx[n, c, h, w] += dy[n, c, i, j]
    return dx
""",
    "conv_loop": """
import numpy as np
def conv_forward_loop(x, w, b, s, p):
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    OH, OW = (H + 2*p - KH) // s + 1, (W + 2*p - KW) // s + 1
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    y = np.zeros((N, F, OH, OW), x.dtype) + b.reshape(1, F, 1, 1)
    for a in range(KH):            # another loop order: kernel offsets outside, a product inside
        for e in range(KW):
            patch = xp[:, :, a : a + s * (OH - 1) + 1 : s, e : e + s * (OW - 1) + 1 : s]
            y += np.einsum("nchw,fc->nfhw", patch, w[:, :, a, e])
    return y, (x, w, s, p)
def conv_backward_loop(dy, cache):
    x, w, s, p = cache
    F, C, KH, KW = w.shape
    OH, OW = dy.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for a in range(KH):
        for e in range(KW):
            rows, cols = slice(a, a + s * (OH - 1) + 1, s), slice(e, e + s * (OW - 1) + 1, s)
            dw[:, :, a, e] = np.einsum("nfhw,nchw->fc", dy, xp[:, :, rows, cols])
            dxp[:, :, rows, cols] += np.einsum("nfhw,fc->nchw", dy, w[:, :, a, e])
    return dxp[:, :, p : p + x.shape[2], p : p + x.shape[3]], dw, dy.sum((0, 2, 3))
""",
    "batchnorm": """
import numpy as np
def batchnorm_forward(x, gamma, beta, eps=1e-5):   # CS231n's staged graph, node by node
    axes = (0, 2, 3)
    mu = x.mean(axes, keepdims=True)
    xmu = x - mu
    var = (xmu ** 2).mean(axes, keepdims=True)
    sqrtvar = np.sqrt(var + eps)
    ivar = 1 / sqrtvar
    xhat = xmu * ivar
    g = gamma.reshape(1, -1, 1, 1)
    return g * xhat + beta.reshape(1, -1, 1, 1), (xhat, g, xmu, ivar, sqrtvar, var, eps)
def batchnorm_backward(dy, cache):
    xhat, g, xmu, ivar, sqrtvar, var, eps = cache
    axes = (0, 2, 3)
    n = dy.size // dy.shape[1]
    dbeta, dgamma = dy.sum(axes), (dy * xhat).sum(axes)
    dxhat = dy * g
    divar = (dxhat * xmu).sum(axes, keepdims=True)
    dxmu1 = dxhat * ivar
    dsqrtvar = -divar / sqrtvar ** 2
    dvar = 0.5 * dsqrtvar / np.sqrt(var + eps)
    dsq = dvar * np.ones_like(dy) / n
    dxmu2 = 2 * xmu * dsq
    dx1 = dxmu1 + dxmu2
    dmu = -dx1.sum(axes, keepdims=True)
    dx = dx1 + dmu * np.ones_like(dy) / n
    return dx, dgamma, dbeta
""",
    "cross_entropy": """
import numpy as np
def cross_entropy_forward(z, t):                  # a one-hot matrix, logsumexp written out
    N, K = z.shape
    onehot = np.eye(K, dtype=z.dtype)[t]
    m = z.max(axis=1)
    lse = m + np.log(np.exp(z - m[:, None]).sum(axis=1))
    return np.mean(lse - (z * onehot).sum(axis=1)), (z, onehot, lse)
def cross_entropy_backward(dloss, cache):
    z, onehot, lse = cache
    return dloss * (np.exp(z - lse[:, None]) - onehot) / z.shape[0]
""",
    "basic_block": """
from npresnet.functional import (batchnorm2d_backward, batchnorm2d_forward, conv2d_backward, conv2d_forward,
                                 relu_backward, relu_forward)
def basic_block_forward(x, params):
    caches = []
    h = x
    for i in (1, 2):
        h, c = conv2d_forward(h, params[f"w{i}"], None, 1, 1)
        h, b = batchnorm2d_forward(h, params[f"gamma{i}"], params[f"beta{i}"], None, None, training=True)
        caches += [c, b]
        if i == 1:
            h, r = relu_forward(h)
            caches.append(r)
    y, r_out = relu_forward(x + h)
    return y, (caches, r_out)
def basic_block_backward(dy, cache):
    (c1, b1, r1, c2, b2), r_out = cache
    d_sum = relu_backward(dy, r_out)
    dx = d_sum.copy()                             # the shortcut's part first, the branch's added after
    grads = {}
    d, grads["gamma2"], grads["beta2"] = batchnorm2d_backward(d_sum, b2)
    d, grads["w2"], _ = conv2d_backward(d, c2)
    d, grads["gamma1"], grads["beta1"] = batchnorm2d_backward(relu_backward(d, r1), b1)
    d, grads["w1"], _ = conv2d_backward(d, c1)
    dx += d
    return dx, grads
""",
    "im2col": """
import numpy as np
def im2col(x, kh, kw, s, p):                      # one output pixel at a time
    N, C, H, W = x.shape
    OH, OW = (H + 2*p - kh) // s + 1, (W + 2*p - kw) // s + 1
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    cols = np.empty((C * kh * kw, N * OH * OW), x.dtype)
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                cols[:, (n * OH + i) * OW + j] = xp[n, :, i*s : i*s + kh, j*s : j*s + kw].ravel()
    return cols
def col2im(cols, x_shape, kh, kw, s, p):
    N, C, H, W = x_shape
    OH, OW = (H + 2*p - kh) // s + 1, (W + 2*p - kw) // s + 1
    dxp = np.zeros((N, C, H + 2*p, W + 2*p), cols.dtype)
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                dxp[n, :, i*s : i*s + kh, j*s : j*s + kw] += cols[:, (n * OH + i) * OW + j].reshape(C, kh, kw)
    return dxp[:, :, p : p + H, p : p + W]
""",
}


@pytest.mark.parametrize("name", sorted(OTHER_WAYS))
def test_a_correct_solution_written_another_way_passes(tmp_path, name):
    result = grade(get(name), write(tmp_path, name, OTHER_WAYS[name]))
    assert result.passed, result.message


# (exercise, text in npresnet's solution, the planted mistake, words the message must contain)
CLASSICS = [
    (
        "batchnorm",
        "dx = (dxhat - mean_dxhat - xhat * mean_dxhat_xhat) * invstd",
        "dx = (dxhat - xhat * mean_dxhat_xhat) * invstd",
        "BatchNorm without the mean of the normalised gradient",
    ),
    (
        "batchnorm",
        "dx = (dxhat - mean_dxhat - xhat * mean_dxhat_xhat) * invstd",
        "dx = (dxhat - mean_dxhat) * invstd",
        "BatchNorm without the variance term",
    ),
    (
        "batchnorm",
        "mean_dxhat_xhat = (dxhat * xhat).mean(axis=(0, 2, 3), keepdims=True)",
        "mean_dxhat_xhat = (dxhat * xhat).sum(axis=(0, 2, 3), keepdims=True) / (xhat.size // xhat.shape[1] - 1)",
        "the unbiased variance in the backward",
    ),
    (
        "im2col",
        "+= cols[:, a, e].transpose(1, 0, 2, 3)",
        "= cols[:, a, e].transpose(1, 0, 2, 3)",
        "col2im that assigns instead of accumulating",
    ),
    (
        "maxpool",
        """            first = np.argmax(window, axis=2)  # argmax returns the first maximum
            a, b = np.divmod(first, k)
            n, c = np.meshgrid(np.arange(N), np.arange(C), indexing="ij")
            np.add.at(dx, (n, c, i * s + a, j * s + b), dy[:, :, i, j])""",
        """            top = window == window.max(axis=2, keepdims=True)
            dx[:, :, i * s : i * s + k, j * s : j * s + k] += (top * dy[:, :, i, j, None]).reshape(N, C, k, k)""",
        "max pooling that routes to every tied element",
    ),
    ("cross_entropy", "return dz * (dloss / N)", "return dz * dloss", "a softmax cross-entropy not divided by N"),
    ("linear", "dw = dy.T @ x", "dw = (dy.T @ x).T", "transposed"),
    ("basic_block", "dx = dx_branch + d_sum", "dx = dx_branch", "a residual block that drops the shortcut's gradient"),
    (
        "bottleneck",
        "return dx_branch + dx_shortcut, grads",
        "return dx_branch, grads",
        "a residual block that drops the shortcut's gradient",
    ),
    ("avgpool", "] += dy[:, :, i : i + 1, j : j + 1]", "] = dy[:, :, i : i + 1, j : j + 1]", "assigned instead of"),
    ("cross_entropy", "dz[np.arange(N), t] -= 1", "pass", "the -1 at the target class forgotten"),
]


@pytest.mark.parametrize(("name", "old", "new", "words"), CLASSICS, ids=[c[3] for c in CLASSICS])
def test_a_classic_mistake_is_named(tmp_path, name, old, new, words):
    result = grade(get(name), write(tmp_path, name, planted(name, old, new)))
    assert result.status == "fail", result.message
    assert words in result.message, result.message
    assert "Worst at" in result.message or "has shape" in result.message, result.message


def test_a_transposed_dw_of_the_wrong_shape_is_named_in_one_line(tmp_path):
    result = grade(get("linear"), write(tmp_path, "linear", planted("linear", "dw = dy.T @ x", "dw = x.T @ dy")))
    assert result.status == "fail"
    assert "dw has shape (3, 2), expected (2, 3)" in result.message and "transposed" in result.message


TWEAKS = {
    "zeros": "np.zeros_like(a)",
    "a constant": "np.full_like(a, 0.5)",
    "empty": "np.empty((0,), a.dtype)",
}


@pytest.mark.parametrize("tweak", sorted(TWEAKS))
@pytest.mark.parametrize("name", NAMES)
def test_no_check_passes_an_empty_zero_or_constant_backward(tmp_path, name, tweak):
    exercise = get(name)
    text = (
        solution(exercise)
        + f"""

import numpy as np
_right = {exercise.backward_name}


def _tweak(a):
    if isinstance(a, dict):
        return {{k: _tweak(v) for k, v in a.items()}}
    if isinstance(a, tuple):
        return tuple(_tweak(v) for v in a)
    return {TWEAKS[tweak]}


def {exercise.backward_name}(*args):
    return _tweak(_right(*args))
"""
    )
    result = grade(exercise, write(tmp_path, name, text))
    assert result.status == "fail", f"a backward returning {tweak} passed {name}"


def test_a_crash_shows_the_learners_traceback_trimmed_to_their_file(tmp_path):
    path = write(tmp_path, "relu", planted("relu", "return dy * (x > 0)", "return dy * (x > 0) @ np.ones((3, 3))"))
    result = grade(get("relu"), path)
    assert result.status == "crash"
    assert "relu.py" in result.message and "ValueError" in result.message
    assert "grader.py" not in result.message and "catalogue" not in result.message  # the package's modules


def test_a_float64_array_from_float32_inputs_is_one_line_naming_both(tmp_path):
    path = write(tmp_path, "relu", planted("relu", "return dy * (x > 0)", "return (dy * (x > 0)).astype(np.float64)"))
    result = grade(get("relu"), path)
    assert result.status == "fail" and "dx has dtype float64, expected float32" in result.message


# ------------------------------------------------------------------------------ the diagnosis itself
def test_the_diagnosis_names_each_pattern_and_admits_when_none_fits():
    rng = np.random.default_rng(0)
    n = rng.standard_normal((4, 3, 2, 2))
    assert "one constant factor" in diagnose(2 * n, n, 1e-6, 1e-4)
    assert "extra factor N" in diagnose(4 * n, n, 1e-6, 1e-4, batch=4)
    per_channel = n * np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    assert "constant within each channel" in diagnose(per_channel, n, 1e-6, 1e-4, channel_axis=1)
    square = rng.standard_normal((3, 3))
    assert "transposed" in diagnose(square.T, square, 1e-6, 1e-4)
    assert "zero" in diagnose(np.zeros_like(n), n, 1e-6, 1e-4)
    row = rng.standard_normal((4, 5))
    off = row.copy()
    off[np.arange(4), [0, 3, 1, 1]] += 1
    assert "one column of each row" in diagnose(off, row, 1e-6, 1e-4)
    branch = rng.standard_normal(n.shape)
    assert "through the shortcut" in diagnose(n - branch, n, 1e-6, 1e-4, branches={"the shortcut": branch})
    assert "the shapes may match by luck" in diagnose(rng.standard_normal(n.shape), n, 1e-6, 1e-4)
    some = n.copy()
    some[0, 0, 0, 0] += 1.0
    some[1, 2, 1, 0] -= 3.0
    assert diagnose(some, n, 1e-6, 1e-4) == ""  # two wrong elements, no pattern: no guess


# --------------------------------------------------------------------------------------- the commands
def test_start_check_hint_solution_and_list(tmp_path, capsys):
    folder = str(tmp_path / "mine")
    assert main(["start", "relu", "--dir", folder]) == 0
    assert main(["check", "relu", "--dir", folder]) == 1
    assert "not written yet" in capsys.readouterr().out
    assert main(["start", "relu", "--dir", folder]) == 1  # never over the learner's file
    assert "not overwritten" in capsys.readouterr().err
    assert main(["hint", "relu", "--dir", folder]) == 0
    assert main(["hint", "relu", "--dir", folder]) == 0
    out = capsys.readouterr().out
    assert "Hint 2 of" in out and out.count("Hint 1 of") == 2
    assert main(["solution", "relu", "--dir", folder]) == 1  # not before the file passes
    assert main(["solution", "relu", "--dir", folder, "--anyway"]) == 0
    shown = capsys.readouterr().out
    with open(os.path.join(folder, "relu.py"), "w", encoding="utf-8") as f:
        f.write(solution(get("relu")))
    assert "def relu_backward" in shown
    assert main(["check", "relu", "--dir", folder]) == 0
    assert main(["solution", "relu", "--dir", folder]) == 0
    capsys.readouterr()
    assert main(["list", "--dir", folder]) == 0
    listing = capsys.readouterr().out
    assert "relu" in listing and "passes" in listing and "not started" in listing
    assert sorted(os.listdir(folder)) == [".npresnet-learn.json", "relu.py"]  # nothing outside the folder


def test_usage_errors_exit_2_in_argparses_format():
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--epochs", "0"])
    assert stopped.value.code == 2
    done = subprocess.run(
        [sys.executable, "-m", "npresnet.learn", "check", "nonsense"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "error: argument NAME: invalid choice" in done.stderr
    helped = subprocess.run([sys.executable, "-m", "npresnet.learn", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "examples:" in helped.stdout and "exit status:" in helped.stdout


# ------------------------------------------------------------------------------------------ the payoff
def test_train_refuses_a_failing_file_before_training(tmp_path, capsys):
    from npresnet.learn.train import main as train

    write(tmp_path, "relu", solution(get("relu")))
    write(tmp_path, "conv", planted("conv", "db = G.sum(axis=1)", "db = G.sum(axis=1) * 2"))
    write(tmp_path, "batchnorm", skeleton(get("batchnorm")))  # started, not written: npresnet's is used
    assert train(str(tmp_path), epochs=1) == 1
    captured = capsys.readouterr()
    assert "refused before training" in captured.err and "conv.py does not pass" in captured.err
    assert "db is wrong" in captured.err and "epoch" not in captured.out


def test_conv_may_import_the_learners_own_im2col(tmp_path):
    write(tmp_path, "im2col", solution(get("im2col")))
    text = planted("conv", "from npresnet.learn.layout import col2im, im2col", "from im2col import col2im, im2col")
    assert grade(get("conv"), write(tmp_path, "conv", text)).passed
    write(tmp_path, "im2col", planted("im2col", "+= cols[:, a, e]", "= cols[:, a, e]"))  # a fresh import
    assert not grade(get("conv"), str(tmp_path / "conv.py")).passed


def test_syntax_errors_and_missing_functions_are_named(tmp_path):
    result = grade(get("relu"), write(tmp_path, "relu", "def relu_forward(x)\n    return x\n"))
    assert result.status == "crash" and "SyntaxError" in result.message and "relu.py" in result.message
    result = grade(get("relu"), write(tmp_path, "relu", "def relu_forward(x):\n    return x, x\n"))
    assert result.status == "fail" and "defines no function relu_backward" in result.message


@pytest.mark.slow  # three short trainings of ResNet-20 on the digits
def test_train_learns_the_digits_through_the_learners_files_and_refuses_a_wrong_one(tmp_path, capsys):
    from npresnet.learn.train import main as train

    folder = tmp_path / "mine"
    folder.mkdir()
    for name in ("linear", "batchnorm"):  # two exercises completed: the reference written to the folder
        write(folder, name, solution(get(name)))
    assert train(str(folder), epochs=4) == 0
    out = capsys.readouterr().out
    assert "linear        YOURS" in out and "batchnorm     YOURS" in out and "conv          npresnet's" in out
    accuracy = float(out.split("reached ")[1].split("%")[0])
    assert accuracy >= 90.0, out

    # a wrong backward is refused before training ...
    wrong = planted("linear", "return dx, dw, db", "return 0 * dx, 0 * dw, 0 * db")
    write(folder, "linear", wrong)
    assert train(str(folder), epochs=4) == 1
    captured = capsys.readouterr()
    assert "refused before training" in captured.err and "epoch" not in captured.out
    # ... and with --anyway it is used, and nothing learns (no gradient reaches any weight)
    assert train(str(folder), epochs=1, anyway=True) == 1
    assert "did not learn" in capsys.readouterr().out
