"""The train step (jitted once, explicit shardings, donated state) and the loop around it.

The step differentiates only the trainable sub-tree: the frozen weights enter the loss as
constants, so backprop computes just the activation gradients it needs to reach the LoRA
factors, and the optimizer never sees the frozen weights. Microbatching splits the global
batch into `num_microbatches` slices along the batch axis, runs them in a `lax.scan`, and
combines gradients so that the update equals the full-batch update.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fiat_t5x import cpu_tuning
from fiat_t5x.models.losses import loss_normalizing_factor_and_weights
from fiat_t5x.training import flops as flops_lib
from fiat_t5x.training.optimizers import (
    Schedule,
    TrainableSelector,
    constant_schedule,
    merge_params,
    select_like,
)
from fiat_t5x.training.partitioning import Partitioner
from fiat_t5x.training.train_state import TrainState

Batch = Mapping[str, Any]
Metrics = dict[str, jax.Array]


# Model metrics that are means over the batch's target tokens (combined token-weighted).
_TOKEN_MEAN_METRICS = ("accuracy",)


class Trainer:
    """Owns the compiled train/eval steps for one model, optimizer and mesh.

    `model` follows the model contract (`loss(params, batch, dropout_rng=...)` returning the
    scalar loss and a metrics dict with `weight_sum`; `logical_axes()`).
    """

    def __init__(
        self,
        model: Any,
        partitioner: Partitioner,
        optimizer: optax.GradientTransformation,
        learning_rate: Schedule,
        selector: TrainableSelector | None = None,
        num_microbatches: int = 1,
        dropout_seed: int = 0,
    ) -> None:
        self.model = model
        self.partitioner = partitioner
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.selector = selector or TrainableSelector()
        self.num_microbatches = int(num_microbatches)
        self.dropout_key = jax.random.key_data(jax.random.PRNGKey(dropout_seed))
        self._logical_axes = model.logical_axes()
        self._train_step = None
        self._compiled_train = None
        self._eval_step = None
        self.flops_per_step: float | None = None
        self.state_shardings = None
        self.frozen_shardings = None

    # ------------------------------------------------------------------ state

    def create_state(self, params: Mapping[str, Any]) -> tuple[TrainState, Any]:
        """Split a full parameter tree, place both halves on the mesh, init the optimizer.

        Returns (state, frozen). `params` may be host numpy arrays or jax arrays.
        """
        trainable, frozen = self.selector.split(params)
        p = self.partitioner
        trainable_axes = select_like(self._logical_axes, trainable)
        frozen_axes = select_like(self._logical_axes, frozen)
        trainable_sh = p.param_shardings(trainable, trainable_axes)
        self.frozen_shardings = p.param_shardings(frozen, frozen_axes)
        opt_shapes = jax.eval_shape(self.optimizer.init, trainable)
        opt_sh = p.opt_state_shardings(opt_shapes, trainable, trainable_sh)
        self.state_shardings = TrainState(step=p.replicated, params=trainable_sh, opt_state=opt_sh)
        frozen = jax.device_put(frozen, self.frozen_shardings)
        trainable = jax.device_put(trainable, trainable_sh)
        init = jax.jit(
            lambda t: TrainState.create(t, self.optimizer), out_shardings=self.state_shardings
        )
        return init(trainable), frozen

    def abstract_state(self, params: Mapping[str, Any]) -> TrainState:
        """ShapeDtypeStructs (with shardings) of the state, for restoring a checkpoint."""
        if self.state_shardings is None:
            raise RuntimeError("call create_state before abstract_state")
        trainable, _ = self.selector.split(params)
        shapes = jax.eval_shape(lambda t: TrainState.create(t, self.optimizer), trainable)
        return jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
            shapes,
            self.state_shardings,
        )

    # ------------------------------------------------------------------ steps

    def _loss_and_grads(self, trainable, frozen, batch, rng) -> tuple[jax.Array, Metrics, Any]:
        def objective(t):
            loss, metrics = self.model.loss(merge_params(t, frozen), batch, dropout_rng=rng)
            return loss, metrics

        (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(trainable)
        return loss, metrics, grads

    def _normalizer(self, batch: Batch) -> jax.Array:
        """The model's loss-normalising factor for `batch` (1 when the loss is a plain sum)."""
        factor, _ = loss_normalizing_factor_and_weights(
            getattr(self.model, "loss_normalizing_factor", None), batch
        )
        return jnp.asarray(1.0 if factor is None else factor, jnp.float32)

    def _accumulated(self, trainable, frozen, batch, rng) -> tuple[jax.Array, Metrics, Any]:
        """Loss, metrics and grads of the full batch, computed in `num_microbatches` slices.

        The model's loss is (sum of token losses) / factor, where the factor is 1, a constant
        or a batch statistic (T5X's loss_normalizing_factor). Microbatch i's loss is rescaled
        by factor_i / factor_full, so the sum over microbatches is exactly the full-batch loss
        and the accumulated gradient the full-batch gradient.
        """
        m = self.num_microbatches
        full_factor = self._normalizer(batch)
        if m == 1:
            return self._loss_and_grads(trainable, frozen, batch, rng)
        rows = next(iter(batch.values())).shape[0]
        if rows % m:
            raise ValueError(
                f"BATCH_SIZE rows per step ({rows}) is not divisible by num_microbatches={m}"
            )
        micro = jax.tree.map(lambda x: x.reshape(m, rows // m, *x.shape[1:]), dict(batch))

        def body(carry, xs):
            index, mb = xs
            loss, metrics, grads = self._loss_and_grads(
                trainable, frozen, mb, None if rng is None else jax.random.fold_in(rng, index)
            )
            scale = self._normalizer(mb) / full_factor
            tokens = metrics["weight_sum"].astype(jnp.float32)
            acc_loss, acc_metrics, acc_grads = carry
            acc_grads = jax.tree.map(lambda a, g: a + scale * g, acc_grads, grads)
            new_metrics = {}
            for k, v in metrics.items():
                if k == "weight_sum":
                    new_metrics[k] = acc_metrics[k] + v
                elif k in _TOKEN_MEAN_METRICS:
                    new_metrics[k] = acc_metrics[k] + tokens * v
                else:
                    new_metrics[k] = acc_metrics[k] + scale * v
            return (acc_loss + scale * loss, new_metrics, acc_grads), None

        first = jax.tree.map(lambda x: x[0], micro)
        metric_shapes = jax.eval_shape(
            lambda: self._loss_and_grads(trainable, frozen, first, rng)[1]
        )
        zeros_metrics = {k: jnp.zeros(s.shape, jnp.float32) for k, s in metric_shapes.items()}
        zeros_grads = jax.tree.map(jnp.zeros_like, trainable)
        (loss, metrics, grads), _ = jax.lax.scan(
            body, (jnp.zeros((), jnp.float32), zeros_metrics, zeros_grads), (jnp.arange(m), micro)
        )
        tokens = jnp.maximum(metrics["weight_sum"], 1e-8)
        metrics = {k: v / tokens if k in _TOKEN_MEAN_METRICS else v for k, v in metrics.items()}
        return loss, metrics, grads

    def _train_step_impl(self, state: TrainState, frozen, batch) -> tuple[TrainState, Metrics]:
        rng = None
        if getattr(self.model.config, "dropout_rate", 0.0) > 0:
            rng = jax.random.fold_in(jax.random.wrap_key_data(self.dropout_key), state.step)
        loss, metrics, grads = self._accumulated(state.params, frozen, batch, rng)
        with jax.named_scope("optimizer"):  # names the update's ops in profiles (bench/)
            updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics)
        metrics["loss"] = loss
        metrics["loss_per_token"] = (
            loss * self._normalizer(batch) / jnp.maximum(metrics["weight_sum"], 1e-8)
        )
        metrics["learning_rate"] = jnp.asarray(self.learning_rate(state.step), jnp.float32)
        metrics["grad_norm"] = optax.global_norm(grads)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    def _eval_step_impl(self, state: TrainState, frozen, batch) -> Metrics:
        loss, metrics = self.model.loss(merge_params(state.params, frozen), batch)
        metrics = dict(metrics)
        metrics["loss"] = loss
        metrics["loss_per_token"] = (
            loss * self._normalizer(batch) / jnp.maximum(metrics["weight_sum"], 1e-8)
        )
        return metrics

    def _compile_steps(self) -> None:
        p = self.partitioner
        batch_sh = p.batch_sharding()
        options = cpu_tuning.xla_compiler_options() or None  # {} off the CPU backend
        self._train_step = jax.jit(
            self._train_step_impl,
            in_shardings=(self.state_shardings, self.frozen_shardings, batch_sh),
            out_shardings=(self.state_shardings, p.replicated),
            donate_argnums=(0,),
            compiler_options=options,
        )
        self._eval_step = jax.jit(
            self._eval_step_impl,
            in_shardings=(self.state_shardings, self.frozen_shardings, batch_sh),
            out_shardings=p.replicated,
            compiler_options=options,
        )

    def train_step(self, state: TrainState, frozen, batch: Mapping[str, jax.Array]):
        """One optimizer update on a global batch (already on the mesh). Donates `state`.

        Compiled ahead of time on first use (one compile per Trainer), which also gives the
        step's FLOPs for MFU.
        """
        if self._train_step is None:
            self._compile_steps()
        if self._compiled_train is None:
            self._compiled_train = self._train_step.lower(state, frozen, batch).compile()
            self.flops_per_step = flops_lib.flops_of(self._compiled_train)
        return self._compiled_train(state, frozen, batch)

    def eval_step(self, state: TrainState, frozen, batch: Mapping[str, jax.Array]) -> Metrics:
        """Teacher-forced loss/accuracy metrics of one global batch (no update)."""
        if self._eval_step is None:
            self._compile_steps()
        return self._eval_step(state, frozen, batch)


@dataclasses.dataclass
class LoopHooks:
    """Callbacks of the training loop, all optional.

    save(state, data_position, force) -> None: checkpoint (the manager decides on the period).
    evaluate(state, frozen) -> dict of metrics, called every `eval_period` steps.
    stop_requested(step) -> bool: e.g. SIGTERM received; the loop saves and returns.
    write_metrics(step, scalars) -> None.
    """

    save: Callable[[TrainState, int, bool], None] | None = None
    evaluate: Callable[[TrainState, Any], Mapping[str, float]] | None = None
    stop_requested: Callable[[int], bool] | None = None
    write_metrics: Callable[[int, Mapping[str, float]], None] | None = None


def train_loop(
    trainer: Trainer,
    state: TrainState,
    frozen: Any,
    batches: Iterator[Mapping[str, np.ndarray]],
    *,
    train_steps: int,
    hooks: LoopHooks | None = None,
    log_period: int = 10,
    eval_period: int = 0,
    peak_flops_per_device: float | None = None,
) -> tuple[TrainState, list[dict[str, float]]]:
    """Run until `state.step == train_steps` (or a stop request). Returns the final state and
    the logged metrics (one dict per log period, host floats).

    Metrics are fetched from the device only every `log_period` steps, so steps are
    dispatched back to back without host round-trips.
    """
    hooks = hooks or LoopHooks()
    p = trainer.partitioner
    step = int(jax.device_get(state.step))
    history: list[dict[str, float]] = []
    pending: list[Metrics] = []
    tokens_since = 0
    t_last = time.perf_counter()
    steps_since = 0
    peak = peak_flops_per_device or flops_lib.peak_flops_per_device()
    stopped = False
    while step < train_steps:
        host_batch = next(batches)
        enc, dec = _tokens(host_batch)
        tokens_since += (enc + dec) * jax.process_count()
        batch = p.host_batch_to_global(host_batch)
        state, metrics = trainer.train_step(state, frozen, batch)
        step += 1
        steps_since += 1
        pending.append(metrics)
        final = step == train_steps
        if step % log_period == 0 or final:
            fetched = jax.device_get(pending)
            pending = []
            now = time.perf_counter()
            elapsed = max(now - t_last, 1e-9)
            scalars = {k: float(v) for k, v in fetched[-1].items()}
            for key in ("loss", "loss_per_token"):
                scalars[key] = float(np.mean([m[key] for m in fetched]))
            scalars["steps_per_sec"] = steps_since / elapsed
            scalars["tokens_per_sec"] = tokens_since / elapsed
            if trainer.flops_per_step and peak:
                scalars["mfu"] = trainer.flops_per_step * scalars["steps_per_sec"] / peak
            scalars["step"] = float(step)
            logging.info(
                "step %d loss/token %.4f lr %.3g steps/s %.2f tokens/s %.0f MFU %s",
                step,
                scalars["loss_per_token"],
                scalars["learning_rate"],
                scalars["steps_per_sec"],
                scalars["tokens_per_sec"],
                f"{scalars['mfu']:.2%}" if "mfu" in scalars else "n/a",
            )
            history.append(scalars)
            if hooks.write_metrics:
                hooks.write_metrics(
                    step, {f"train/{k}": v for k, v in scalars.items() if k != "step"}
                )
            t_last, tokens_since, steps_since = time.perf_counter(), 0, 0
        position = getattr(batches, "position", step)
        if hooks.stop_requested and hooks.stop_requested(step):
            logging.warning("stop requested at step %d: saving a checkpoint and exiting", step)
            if hooks.save:
                hooks.save(state, position, True)
            stopped = True
            break
        if hooks.save:
            hooks.save(state, position, final)
        if hooks.evaluate and eval_period and (step % eval_period == 0 or final):
            results = hooks.evaluate(state, frozen)
            if hooks.write_metrics and results:
                hooks.write_metrics(step, results)
            t_last = time.perf_counter()
    if stopped:
        logging.info("training stopped early at step %d", step)
    return state, history


def _tokens(batch: Mapping[str, np.ndarray]) -> tuple[int, int]:
    return (
        int(np.count_nonzero(batch["encoder_input_tokens"])),
        int(np.count_nonzero(batch["decoder_target_tokens"])),
    )


def inference_trainer(model: Any, partitioner: Partitioner | None = None) -> Trainer:
    """A Trainer for eval and infer: sharding and the eval step are training's, the update is
    zero (optax.set_to_zero keeps no optimizer state), so nothing is trained by accident."""
    return Trainer(
        model,
        partitioner or Partitioner(),
        optax.set_to_zero(),
        constant_schedule(0.0),
        TrainableSelector(patterns=[".*"]),
    )
