"""Step FLOPs for MFU and preflight count every layer of a scanned stack, and only the work
that runs."""

import jax
import jax.numpy as jnp

from fiat_t5x.models.cpu_ops import dense_matmul
from fiat_t5x.training.flops import jaxpr_flops, step_flops


def _unrolled(x, w):
    for i in range(w.shape[0]):
        x = jnp.tanh(x @ w[i])
    return x


def _scanned(x, w):
    return jax.lax.scan(lambda c, wi: (jnp.tanh(c @ wi), None), x, w)[0]


def test_a_scanned_stack_counts_as_many_matmuls_as_the_unrolled_one():
    x, w = jnp.ones((8, 16)), jnp.ones((4, 16, 16))
    expected = 4 * 2 * 8 * 16 * 16
    for fn in (_unrolled, _scanned):
        assert jaxpr_flops(jax.jit(fn).trace(x, w).jaxpr) == expected, fn.__name__
    # XLA's cost analysis counts a loop body once: why the trainer does not use it.
    xla = jax.jit(_scanned).lower(x, w).compile().cost_analysis()["flops"]
    assert xla < expected / 2


def test_a_frozen_kernels_gradient_in_a_custom_backward_is_not_counted():
    """LoRA's frozen projections on the CPU path: the custom backward computes the kernel's
    gradient too, and nothing uses it (XLA removes it); only forward and input gradient run."""
    x, w = jnp.ones((8, 16)), jnp.ones((16, 32))
    step = jax.jit(jax.grad(lambda x: jnp.sum(jnp.tanh(dense_matmul(x, w)))))
    traced = step.trace(x).jaxpr
    one_matmul = 2 * 8 * 16 * 32
    assert step_flops(traced) == 2 * one_matmul
    assert jaxpr_flops(traced) == 3 * one_matmul  # the dead kernel gradient, still traced
    trainable = jax.jit(jax.grad(lambda w: jnp.sum(jnp.tanh(dense_matmul(x, w)))))
    assert step_flops(trainable.trace(w).jaxpr) == 2 * one_matmul  # forward + kernel gradient
