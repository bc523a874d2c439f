"""``SyncBatchNorm``: BatchNorm2d with the statistics of the whole batch over all ranks, and
``convert_sync_batchnorm``. The statistics math is ``npresnet.functional.batchnorm``'s, shared."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import get_array_module, to_numpy
from ..checks import check_like, check_nchw
from ..functional.batchnorm import (
    BatchNormCache,
    affine_normalize,
    batch_stats_input_grad,
    batchnorm2d_backward,
    channel_moments,
    combine_channel_moments,
    grad_sums,
)
from ..nn.batchnorm import BatchNorm2d
from ..nn.module import Module
from .world import SINGLE_PROCESS, World, current_world

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm"]


class SyncBatchNorm(BatchNorm2d):
    """``BatchNorm2d`` whose training statistics are those of the whole batch, over all ranks.

    Notation: rank r holds x_r (N_r, C, H, W) and n_r = N_r*H*W values per channel; n = sum n_r.

    Forward (training)::

        local:      mu_r = mean(x_r),  M2_r = sum((x_r - mu_r)^2)          per channel, (C,)
        allgather   (n_r, mu_r, M2_r) from every rank (one collective of 2C+1 numbers)
        combine:    mu  = sum_r n_r mu_r / n
                    M2  = sum_r M2_r + sum_r n_r (mu_r - mu)^2              (Chan et al.; no
                    var = M2 / n                                            cancellation)
        x_hat = (x_r - mu) / sqrt(var + eps),  y = gamma x_hat + beta; running stats as BatchNorm2d,
        with the unbiased var * n / (n - 1) of the *global* n.

    Backward, with g_r = dL/dy on rank r::

        allreduce   (sum g, sum g * x_hat) over every rank's values         (one collective of 2C)
        dx_r   = gamma invstd (g_r - sum(g)/n - x_hat_r sum(g x_hat)/n)
        dgamma = sum over rank r of g_r x_hat_r,  dbeta = sum of g_r        (local sums)

    dgamma and dbeta stay local: the ``GradientAverager`` averages them with every other
    parameter. This is exact when every rank's loss is a mean over the same number B of images:
    then g_r = R * dL_global/dy, each rank's dx is R times the global one, and averaging the R
    parameter gradients divides the factor out again. The result equals ``BatchNorm2d`` on the
    concatenated batch. Evaluation mode (running statistics) involves no communication; with a
    world of size 1 this *is* ``BatchNorm2d``. Statistics are combined in float64 on the host
    (CuPy: the (C,) vectors are staged through host memory).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        world: World | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.world = world if world is not None else (current_world() or SINGLE_PROCESS)

    def forward(self, x: Any) -> Any:
        if not self.training or self.world.size == 1:
            return super().forward(x)
        check_nchw(x, self.num_features, "input", "SyncBatchNorm")
        weight = self.weight.data if self.weight is not None else None  # (C,) gamma; None without affine
        bias = self.bias.data if self.bias is not None else None
        reference = weight if weight is not None else self.running_mean
        if reference is not None:
            check_like(x, reference, "input", "SyncBatchNorm parameters")
        xp = get_array_module(x)
        C = x.shape[1]
        n_local, mean_local, m2_local, _ = channel_moments(x)
        local = np.concatenate(
            [[n_local], to_numpy(mean_local).astype(np.float64), to_numpy(m2_local).astype(np.float64)]
        )
        gathered = self.world.allgather(local, "SyncBatchNorm statistics")  # (R, 2C + 1)
        counts, means, m2s = gathered[:, 0], gathered[:, 1 : C + 1], gathered[:, C + 1 :]
        n = int(counts.sum())
        if n <= 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got {n} over all ranks "
                f"(input of shape {tuple(x.shape)} on rank {self.world.rank})"
            )
        mean, var = combine_channel_moments(counts, means, m2s)  # biased var
        if self.track_running_stats:
            momentum = self.momentum if self.momentum is not None else 1.0 / (int(self.num_batches_tracked) + 1)
            self.running_mean *= 1 - momentum
            self.running_mean += xp.asarray(momentum * mean, dtype=self.running_mean.dtype)
            self.running_var *= 1 - momentum
            self.running_var += xp.asarray(momentum * var * (n / (n - 1)), dtype=self.running_var.dtype)
            self.num_batches_tracked += 1
        invstd = xp.asarray(1.0 / np.sqrt(var + self.eps), dtype=x.dtype)
        centred = x - xp.asarray(mean, dtype=x.dtype).reshape(1, -1, 1, 1)
        y, x_hat = affine_normalize(centred, invstd, weight, bias)
        self._save_for_backward((BatchNormCache(x_hat, invstd, weight, True), n))
        return y

    def backward(self, dout: Any) -> Any:
        cache = self._pop_cache()
        if isinstance(cache, BatchNormCache):  # evaluation mode or a single process: BatchNorm2d's math
            dx, dweight, dbias = batchnorm2d_backward(dout, cache)
        else:
            dx, dweight, dbias = self._synced_backward(dout, *cache)
        if self.weight is not None and self.bias is not None:
            self.weight.accumulate_grad(dweight)
            self.bias.accumulate_grad(dbias)
        return dx

    def _synced_backward(self, dout: Any, cache: BatchNormCache, n: int) -> tuple[Any, Any, Any]:
        """(dx, dgamma, dbeta) of a training step whose statistics came from all ``n`` values of every rank."""
        x_hat, invstd, weight = cache.x_hat, cache.invstd, cache.weight
        check_nchw(dout, self.num_features, "upstream gradient", "SyncBatchNorm")
        if tuple(dout.shape) != tuple(x_hat.shape):
            raise ValueError(
                f"SyncBatchNorm: upstream gradient must have shape {tuple(x_hat.shape)}, got {tuple(dout.shape)}"
            )
        xp = get_array_module(dout)
        dbias, dweight = grad_sums(dout, x_hat)
        sums = np.concatenate([to_numpy(dbias), to_numpy(dweight)]).astype(np.float64)
        sums = self.world.allreduce_(sums, "sum", "SyncBatchNorm gradient sums")
        C = self.num_features
        mean_g = xp.asarray(sums[:C] / n, dtype=dout.dtype)
        mean_gx = xp.asarray(sums[C:] / n, dtype=dout.dtype)
        scale = invstd if weight is None else weight * invstd
        return batch_stats_input_grad(dout, x_hat, mean_g, mean_gx, scale), dweight, dbias

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, world_size={self.world.size}"


def convert_sync_batchnorm(model: Module, world: World | None = None) -> Module:
    """Replace every ``BatchNorm2d`` of ``model`` by a ``SyncBatchNorm`` (torch's helper of that name).

    The new layers take over the old ones' parameters and buffers (the same arrays), so weights,
    state_dict keys and the optimizer's parameters are unchanged; children keep their place, so
    ``Sequential`` order and the state_dict order are unchanged too. Returns ``model`` (or the new
    layer if ``model`` itself is a BatchNorm2d).
    """
    world = world if world is not None else (current_world() or SINGLE_PROCESS)

    def convert(module: Module) -> Module:
        if isinstance(module, BatchNorm2d) and not isinstance(module, SyncBatchNorm):
            sync = SyncBatchNorm(
                module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats, world=world
            )
            for name, param in module.named_parameters(recurse=False):
                sync.register_parameter(name, param)
            for name, buffer in module.named_buffers(recurse=False):
                sync.register_buffer(name, buffer)
            sync.train(module.training)
            return sync
        for name, child in list(module.named_children()):
            if child is not None:
                module.replace_child(name, convert(child))  # in place: keeps the children's order
        return module

    return convert(model)
