"""orbax checkpoints of what training changes: step, trainable params, optimizer state, data position.

The frozen base is read from INITIAL_CHECKPOINT_PATH at every (re)start and never written
here, so a LoRA checkpoint of a 3B model is megabytes. orbax writes each step into a temporary
directory and renames it when complete, so a killed save leaves no visible checkpoint. On top
of that every checkpoint records an order-independent integer checksum of each saved array.

Two kinds of trouble are told apart, because they need opposite answers:
* **Damage** (a file that cannot be read, or arrays whose checksums differ from those recorded at
  save time): the trainer moves the directory aside to `checkpoint_N.damaged-<time>` (never
  deleted), logs the file and the reason in full, restores the next older one and saves step N
  again when it gets there. Readers (eval, infer) skip it with the same warning.
* **Another configuration** (the checkpoint's parameter paths, shapes or optimizer state do not
  fit the run's: other LoRA rank or targets, another optimizer): nothing is wrong with the files,
  so nothing is moved; `CheckpointMismatch` names the differences (old vs new) and the fixes.
"""

from __future__ import annotations

import datetime
import logging
import signal
import threading
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from fiat_t5x import storage
from fiat_t5x.training.train_state import TrainState

_STEP_PREFIX = "checkpoint"
# Layout: '/'-joined leaf path -> (shape, dtype name), e.g. 'params/q/lora_a' -> ((8, 2), 'float32').
Layout = dict[str, tuple[tuple[int, ...], str]]
_MAX_LISTED = 8


def _bits(x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    width = x.dtype.itemsize
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[width]
    if width == 8:  # split 64-bit words into two 32-bit halves
        x = jax.lax.bitcast_convert_type(x, jnp.uint32)
    else:
        x = jax.lax.bitcast_convert_type(x, unsigned)
    return x.astype(jnp.uint32).reshape(-1)


@jax.jit
def checksums(tree: Any) -> Any:
    """Per leaf [sum of bit patterns, sum of bit patterns × (index+1)], mod 2**32.

    Integer sums are exact whatever the reduction order or sharding, so the same array gives
    the same checksum on any mesh; the index-weighted sum also catches moved data.
    """

    def one(x: jax.Array) -> jax.Array:
        bits = _bits(x)
        weights = jnp.arange(1, bits.size + 1, dtype=jnp.uint32)
        return jnp.stack(
            [jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * weights, dtype=jnp.uint32)]
        )

    return jax.tree.map(one, tree)


def _checksum_list(tree: Any) -> list[list[int]]:
    return [
        [int(v) for v in np.asarray(c)] for c in jax.device_get(jax.tree.leaves(checksums(tree)))
    ]


def _path_name(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def leaf_paths(tree: Any) -> list[str]:
    """'/'-joined paths of the leaves of `tree`, in `jax.tree.leaves` order."""
    return [_path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def layout_of(tree: Any) -> Layout:
    """Shape and dtype of every leaf (arrays, ShapeDtypeStructs or orbax array metadata)."""
    return {
        _path_name(path): (tuple(int(d) for d in leaf.shape), np.dtype(leaf.dtype).name)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def _describe(entry: tuple[tuple[int, ...], str] | None) -> str:
    return "absent" if entry is None else f"{entry[0]} {entry[1]}"


def layout_differences(saved: Layout, expected: Layout) -> list[str]:
    """What differs between a checkpoint's layout and the run's, one phrase per difference.

    Parameters are named one by one (old vs new); the optimizer state, which a checkpoint keeps
    as a list of leaves, is summarised (how many arrays, of which shapes).
    """
    lines = []
    for path in sorted(set(saved) | set(expected)):
        if path.startswith("opt_state/"):
            continue
        old, new = saved.get(path), expected.get(path)
        if old != new:
            lines.append(f"{path}: checkpoint {_describe(old)} vs now {_describe(new)}")

    def optimizer(layout: Layout) -> list[str]:
        keys = sorted((k for k in layout if k.startswith("opt_state/")), key=lambda k: int(k[10:]))
        return [_describe(layout[k]) for k in keys]

    old_opt, new_opt = optimizer(saved), optimizer(expected)
    if old_opt != new_opt:
        lines.append(
            f"optimizer state: checkpoint {len(old_opt)} arrays {_shortened(old_opt)} vs now "
            f"{len(new_opt)} arrays {_shortened(new_opt)} (another optimizer or optimizer setting)"
        )
    return lines


def _shortened(items: list[str]) -> str:
    if len(items) <= _MAX_LISTED:
        return "[" + ", ".join(items) + "]"
    return "[" + ", ".join(items[:_MAX_LISTED]) + f", ... {len(items) - _MAX_LISTED} more]"


class CheckpointMismatch(ValueError):
    """MODEL_DIR's checkpoints were written by another configuration (not damage)."""


def _now() -> str:
    return datetime.datetime.now().strftime("%Y%m%dT%H%M%S")


def _everyone_agrees(ok: bool) -> bool:
    """True when `ok` holds on every process (a small all-gather with several processes), so
    that all processes take the same branch before the next collective."""
    if jax.process_count() == 1:
        return ok
    flags = multihost_utils.process_allgather(np.asarray(ok, np.int32))
    return bool(np.all(flags))


class CheckpointManager:
    """Saves every `period` steps (and on demand), keeps the newest `keep`, restores the
    newest intact one."""

    def __init__(self, directory: str, period: int = 1000, keep: int | None = 3) -> None:
        self.directory = storage.epath_directory(directory)
        self.period = int(period)
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=1,
            max_to_keep=keep,
            step_prefix=_STEP_PREFIX,
            enable_async_checkpointing=False,
            create=True,
        )
        # Handlers named up front, so metadata can be read before anything was saved or restored.
        handlers = {"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )

    def step_dir(self, step: int) -> str:
        return storage.join(self.directory, f"{_STEP_PREFIX}_{step}")

    def all_steps(self) -> list[int]:
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def should_save(self, step: int, force: bool = False) -> bool:
        if step in self._manager.all_steps():
            return False
        return force or (self.period > 0 and step % self.period == 0)

    def save(
        self, state: TrainState, data_position: int, force: bool = False, *, step: int | None = None
    ) -> bool:
        """Write a checkpoint of `state` (collective: every process calls it).

        `step` is the state's step when the caller knows it (the training loop does), which
        spares a device-to-host fetch on every step that is not saved.
        """
        step = int(jax.device_get(state.step)) if step is None else int(step)
        if not self.should_save(step, force):
            return False
        tree = state.as_dict()
        meta = {
            "step": step,
            "data_position": int(data_position),
            "checksums": _checksum_list(tree),
            "num_leaves": len(jax.tree.leaves(tree)),
        }
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.PyTreeSave(tree), meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        self._manager.wait_until_finished()
        logging.info("saved checkpoint %s (data position %d)", self.step_dir(step), data_position)
        return True

    # ------------------------------------------------------------------ layout

    def saved_layout(self, step: int) -> Layout:
        """Shapes and dtypes of checkpoint `step`'s arrays, from orbax's metadata (no array read)."""
        return layout_of(self._manager.item_metadata(step)["state"].tree)

    def check_fits(self, expected: Any, *, start_over_on_mismatch: bool = False) -> None:
        """Stop (CheckpointMismatch) when the newest checkpoint with readable metadata was
        written by another configuration than `expected` (the abstract `TrainState.as_dict()`
        of this run); with `start_over_on_mismatch`, move every checkpoint aside instead so the
        run starts from step 0. Unreadable metadata is damage, left to `restore_latest`."""
        want = layout_of(expected)
        for step in reversed(self.all_steps()):
            try:
                saved = self.saved_layout(step)
            except Exception:  # damage: restore_latest sets it aside with the full reason
                continue
            differences = layout_differences(saved, want)
            if not differences:
                return
            if start_over_on_mismatch:
                logging.warning(
                    "%s was written by another configuration (%s); START_OVER_ON_MISMATCH=True: "
                    "moving every checkpoint of %s aside and training from step 0",
                    self.step_dir(step),
                    "; ".join(differences),
                    self.directory,
                )
                for old in self.all_steps():
                    self._set_aside(old, "superseded")
                return
            raise CheckpointMismatch(self._mismatch_message(step, differences))
        return

    def _mismatch_message(self, step: int, differences: list[str]) -> str:
        shown = differences[:_MAX_LISTED]
        more = len(differences) - len(shown)
        return (
            f"{self.step_dir(step)} was written by another configuration than this run's "
            f"({len(differences)} difference{'s' if len(differences) > 1 else ''}: "
            + "; ".join(shown)
            + (f"; ... {more} more" if more else "")
            + "). It is not damaged, so nothing was changed. Either run with the configuration "
            "it was trained with, or train this configuration in a new MODEL_DIR, or start "
            "over in this one with --gin.START_OVER_ON_MISMATCH=True (moves its checkpoints "
            "aside to checkpoint_N.superseded-<time>; nothing is deleted)."
        )

    def _set_aside(self, step: int, label: str) -> str:
        """Rename checkpoint_N to checkpoint_N.<label>-<time> (process 0; all processes wait)."""
        source = self.step_dir(step)
        target = f"{source}.{label}-{_now()}"
        if jax.process_index() == 0:
            epath.Path(source).rename(target)  # a bucket's too (etils, as orbax)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"fiat_t5x set aside {source}")
        self._manager.reload()
        return target

    # ------------------------------------------------------------------ restore

    def restore_latest(self, template: TrainState) -> tuple[TrainState, int] | None:
        """(state, data position) from the newest intact checkpoint, or None if there is none.

        `template` is a state (or its abstract version with shardings) giving structure,
        shapes, dtypes and shardings. A checkpoint of another configuration raises
        CheckpointMismatch; a damaged one is moved aside (see the module docstring) and the
        next older one is tried.
        """
        abstract = jax.tree.map(
            lambda x: (
                x
                if isinstance(x, jax.ShapeDtypeStruct)
                else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
            ),
            template.as_dict(),
        )
        want = layout_of(abstract)
        for step in reversed(self.all_steps()):
            where = self.step_dir(step)
            problem = None
            try:
                differences = layout_differences(self.saved_layout(step), want)
            except Exception:  # unreadable metadata: the restore below tells whether it is damage
                differences = []
            if differences:
                raise CheckpointMismatch(self._mismatch_message(step, differences))
            tree = meta = None
            try:
                restored = self._manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.PyTreeRestore(
                            item=abstract,
                            restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                        ),
                        meta=ocp.args.JsonRestore(),
                    ),
                )
                tree, meta = restored["state"], restored["meta"]
            except Exception as e:  # a file that cannot be read
                problem = f"{type(e).__name__}: {e}"
            if not _everyone_agrees(problem is None):
                problem = problem or "another process could not read it"
            if problem is None:
                problem = _verify(tree, meta, leaf_paths(abstract))
            if problem:
                moved = self._set_aside(step, "damaged")
                logging.warning(
                    "skipping damaged checkpoint %s: %s. Moved it to %s (kept, not deleted); "
                    "trying an older one, and step %d will be saved again when training gets "
                    "there.",
                    where,
                    problem,
                    moved,
                    step,
                )
                continue
            logging.info("restored %s (data position %d)", where, meta["data_position"])
            return template.replace_from_dict(tree), int(meta["data_position"])
        return None

    def restore_latest_params(
        self, sharding_for: Callable[[str, tuple[int, ...]], Any] | None = None
    ) -> tuple[Any, int] | None:
        """(trainable params, step) of the newest intact checkpoint, or None; read without an
        optimizer configuration, so evaluation and inference need none.

        `sharding_for(path, shape)` places each parameter (e.g. by the model's logical axes on
        the training mesh), every process reading only its shards; None gives host numpy
        arrays. Only the params are read (not the optimizer state), each checked against its
        recorded checksum. Readers leave damaged checkpoints where they are (the trainer moves
        them aside).
        """
        for step in reversed(self.all_steps()):
            try:
                saved_tree = self._manager.item_metadata(step)["state"].tree
                item = jax.tree_util.tree_map_with_path(
                    lambda path, leaf: _restore_target(path, leaf, sharding_for),
                    saved_tree["params"],
                )
                restored = self._manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.PyTreeRestore(
                            item={"params": item},
                            restore_args={
                                "params": ocp.checkpoint_utils.construct_restore_args(item)
                            },
                            partial_restore=True,
                        ),
                        meta=ocp.args.JsonRestore(),
                    ),
                )
                params = restored["state"]["params"]
                problem = _verify_subtree(params, "params", saved_tree, restored["meta"])
            except Exception as e:  # any read failure means the checkpoint is unusable
                problem = f"{type(e).__name__}: {e}"
            if not _everyone_agrees(problem is None):
                problem = problem or "another process could not read it"
            if problem:
                logging.warning(
                    "skipping damaged checkpoint %s: %s. Using an older one; training in this "
                    "MODEL_DIR moves it aside and saves the step again.",
                    self.step_dir(step),
                    problem,
                )
                continue
            return (jax.device_get(params) if sharding_for is None else params), step
        return None

    def close(self) -> None:
        self._manager.close()


def _restore_target(path: tuple, leaf: Any, sharding_for: Callable | None) -> Any:
    """What to restore a saved array (orbax metadata) as: an array placed by `sharding_for`,
    or a host numpy array."""
    shape = tuple(int(d) for d in leaf.shape)
    if sharding_for is None:
        return np.zeros((), np.dtype(leaf.dtype))
    return jax.ShapeDtypeStruct(shape, leaf.dtype, sharding=sharding_for(_path_name(path), shape))


def _checksum_problems(tree: Any, recorded: list, names: list[str]) -> str | None:
    actual = _checksum_list(tree)
    if len(actual) != len(recorded):
        return f"{len(recorded)} arrays recorded, {len(actual)} restored"
    wrong = [n for n, a, r in zip(names, actual, recorded, strict=True) if a != list(r)]
    if wrong:
        return (
            "array checksums differ from those recorded at save time for "
            + _shortened(wrong)
            + " (a truncated or corrupted file)"
        )
    return None


def _verify(
    tree: Mapping[str, Any], meta: Mapping[str, Any] | None, names: list[str]
) -> str | None:
    """Why a restored tree cannot be trusted, or None. `names` are its leaf paths."""
    if not meta or "checksums" not in meta:
        return "no metadata with checksums"
    if meta.get("num_leaves") != len(jax.tree.leaves(tree)):
        return f"{meta.get('num_leaves')} leaves recorded, {len(jax.tree.leaves(tree))} restored"
    return _checksum_problems(tree, meta["checksums"], names)


def _verify_subtree(
    subtree: Any, key: str, saved_tree: Any, meta: Mapping[str, Any] | None
) -> str | None:
    """`_verify` for the `key` part of a checkpoint: its leaves' checksums are found by their
    position among all leaves of the saved tree (the order the checksums were recorded in)."""
    if not meta or "checksums" not in meta:
        return "no metadata with checksums"
    all_paths = leaf_paths(saved_tree)
    if meta.get("num_leaves") != len(all_paths):
        return f"{meta.get('num_leaves')} leaves recorded, {len(all_paths)} in its metadata"
    index = {p: i for i, p in enumerate(all_paths)}
    names = [f"{key}/{p}" for p in leaf_paths(subtree)]
    missing = [n for n in names if n not in index]
    if missing:
        return f"arrays {_shortened(missing)} are not in the checkpoint's metadata"
    recorded = [meta["checksums"][index[n]] for n in names]
    return _checksum_problems(subtree, recorded, names)


class PreemptionWatcher:
    """Turns SIGTERM (preemption, `kill`, SLURM's time limit) into a request to save and stop.

    With several processes the flag is agreed on every `sync_period` steps (a small all-gather),
    so all processes save the same step and stop together.
    """

    def __init__(self, sync_period: int = 10) -> None:
        self._event = threading.Event()
        self.sync_period = sync_period
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        logging.warning("received signal %d: will checkpoint and exit after this step", signum)
        self._event.set()

    def stop_requested(self, step: int) -> bool:
        if jax.process_count() == 1:
            return self._event.is_set()
        if step % self.sync_period:
            return False
        flags = multihost_utils.process_allgather(np.asarray(self._event.is_set(), np.int32))
        return bool(np.any(flags))

    def restore_handler(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
