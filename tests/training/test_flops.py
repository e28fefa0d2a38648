"""Step FLOPs for MFU and preflight count every layer of a scanned stack."""

import jax
import jax.numpy as jnp

from fiat_t5x.training.flops import jaxpr_flops


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
