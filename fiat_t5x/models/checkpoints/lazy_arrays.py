"""Checkpoint arrays read on demand, one index domain at a time.

Every reader in this package returns `{path: LazyArray}` instead of numpy arrays: a LazyArray
knows its shape and dtype and reads only the block `read(index)` asks for (TensorStore reads the
chunks that intersect it, safetensors maps the file). Layout changes between a checkpoint and the
model (transposed HF kernels, scanned layer stacks, 3-D attention kernels, a scaled output head)
are views that translate the index, so they never materialise a whole array or layer stack.

Two consumers share this code: `materialize` (the numpy path of `fiat-t5x convert` and the
tests) reads every array whole; the sharded start-up (`fiat_t5x.training.initial_params`) reads
each device's shard with `read(shard_index)` straight into a `jax.Array`.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_dtypes  # noqa: F401  (registers bfloat16 & co. with numpy, which safetensors needs)
import numpy as np

from fiat_t5x.models.checkpoints.tree import CheckpointError

Index = tuple[slice, ...]


def normalize_index(index: Sequence[slice] | None, shape: Sequence[int]) -> Index:
    """Concrete `slice(start, stop)` per dimension (steps of 1 only; None = everything)."""
    if index is None:
        index = ()
    index = tuple(index) + (slice(None),) * (len(shape) - len(tuple(index)))
    if len(index) != len(shape):
        raise IndexError(f"index {index} has more dimensions than the shape {tuple(shape)}")
    out = []
    for s, n in zip(index, shape, strict=True):
        if not isinstance(s, slice):
            raise IndexError(f"lazy arrays are read by slices, got {s!r}")
        start, stop, step = s.indices(n)
        if step != 1:
            raise IndexError(f"lazy arrays are read with step 1, got {s!r}")
        out.append(slice(start, max(start, stop)))
    return tuple(out)


def _extent(s: slice) -> int:
    return s.stop - s.start


class LazyArray(abc.ABC):
    """An array of known shape and dtype whose blocks are read on request."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @abc.abstractmethod
    def _read(self, index: Index) -> np.ndarray:
        """The block at a normalised index (shape = the slices' extents)."""

    def read(self, index: Sequence[slice] | None = None) -> np.ndarray:
        """The block at `index` (a tuple of step-1 slices; None for the whole array)."""
        index = normalize_index(index, self.shape)
        block = np.asarray(self._read(index))
        want = tuple(_extent(s) for s in index)
        if block.shape != want:
            raise ValueError(f"{self!r}: read {index} gave shape {block.shape}, expected {want}")
        return block

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, dtype={np.dtype(self.dtype).name})"


class InMemoryArray(LazyArray):
    """A numpy array already in memory (inline msgpack leaves, tests, pickle checkpoints)."""

    def __init__(self, value: Any) -> None:
        self.value = np.asarray(value)
        self.shape = tuple(self.value.shape)
        self.dtype = self.value.dtype

    def _read(self, index: Index) -> np.ndarray:
        return self.value[index]


class TensorStoreArray(LazyArray):
    """A TensorStore array (zarr / zarr3, plain files or OCDBT, local or gs://)."""

    def __init__(self, store: Any, name: str) -> None:
        if any(int(o) != 0 for o in store.domain.origin):
            raise ValueError(f"{name}: TensorStore domain {store.domain} does not start at 0")
        self.store = store
        self.name = name
        self.shape = tuple(int(n) for n in store.domain.shape)
        self.dtype = np.dtype(store.dtype.numpy_dtype)

    def _read(self, index: Index) -> np.ndarray:
        try:
            return np.asarray(self.store[index].read().result())
        except ValueError as e:
            raise CheckpointError(f"reading parameter {self.name!r} failed: {e}") from e


class SafetensorsArray(LazyArray):
    """One tensor of a `.safetensors` file; slices are read from the memory-mapped file."""

    def __init__(self, path: str, key: str, shape: Sequence[int], dtype: np.dtype) -> None:
        self.path, self.key = path, key
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)

    def _read(self, index: Index) -> np.ndarray:
        from safetensors import safe_open

        with safe_open(self.path, framework="np") as f:
            if not self.shape:
                return np.asarray(f.get_tensor(self.key))
            return np.array(f.get_slice(self.key)[index])


class Transposed(LazyArray):
    """`base.transpose(perm)` (e.g. HF's [out, in] Linear weights as our [in, out] kernels)."""

    def __init__(self, base: LazyArray, perm: Sequence[int] | None = None) -> None:
        self.base = base
        self.perm = tuple(range(base.ndim))[::-1] if perm is None else tuple(perm)
        self.shape = tuple(base.shape[p] for p in self.perm)
        self.dtype = base.dtype

    def _read(self, index: Index) -> np.ndarray:
        base_index = [slice(0, 0)] * self.base.ndim
        for out_axis, base_axis in enumerate(self.perm):
            base_index[base_axis] = index[out_axis]
        return self.base.read(tuple(base_index)).transpose(self.perm)


class LayerOf(LazyArray):
    """Layer `layer` of a stack whose layer axis is `axis` (a scanned checkpoint, unscanned)."""

    def __init__(self, base: LazyArray, layer: int, axis: int) -> None:
        if not 0 <= axis < base.ndim or not 0 <= layer < base.shape[axis]:
            raise IndexError(f"no layer {layer} on axis {axis} of {base!r}")
        self.base, self.layer, self.axis = base, layer, axis
        self.shape = base.shape[:axis] + base.shape[axis + 1 :]
        self.dtype = base.dtype

    def _read(self, index: Index) -> np.ndarray:
        at = (slice(self.layer, self.layer + 1),)
        block = self.base.read(index[: self.axis] + at + index[self.axis :])
        return np.squeeze(block, axis=self.axis)


class StackedLayers(LazyArray):
    """Per-layer arrays stacked on a new `axis` (an unscanned checkpoint for a scanned model);
    a read touches only the layers in its index."""

    def __init__(self, layers: Sequence[LazyArray], axis: int) -> None:
        first = layers[0]
        for layer in layers[1:]:
            if layer.shape != first.shape or layer.dtype != first.dtype:
                raise ValueError(f"cannot stack {layer!r} with {first!r}")
        self.layers, self.axis = list(layers), axis
        self.shape = first.shape[:axis] + (len(layers),) + first.shape[axis:]
        self.dtype = first.dtype

    def _read(self, index: Index) -> np.ndarray:
        rest = index[: self.axis] + index[self.axis + 1 :]
        picked = range(index[self.axis].start, index[self.axis].stop)
        if not picked:
            return np.zeros(tuple(_extent(s) for s in index), self.dtype)
        return np.stack([self.layers[i].read(rest) for i in picked], axis=self.axis)


class MergedAxes(LazyArray):
    """Axes `axis` and `axis + 1` joined into one (3-D [embed, heads, kv] attention kernels as
    the contract's [embed, heads * kv]); reads the heads that cover the requested range."""

    def __init__(self, base: LazyArray, axis: int) -> None:
        self.base, self.axis = base, axis
        self.inner = base.shape[axis + 1]
        merged = base.shape[axis] * self.inner
        self.shape = base.shape[:axis] + (merged,) + base.shape[axis + 2 :]
        self.dtype = base.dtype

    def _read(self, index: Index) -> np.ndarray:
        a, inner = self.axis, self.inner
        want = index[a]
        first, last = want.start // inner, -(-want.stop // inner)
        outer = (slice(first, max(first, last)), slice(0, inner))
        block = self.base.read(index[:a] + outer + index[a + 1 :])
        block = block.reshape(block.shape[:a] + (-1,) + block.shape[a + 2 :])
        offset = first * inner
        take = [slice(None)] * block.ndim
        take[a] = slice(want.start - offset, want.stop - offset)
        return block[tuple(take)]


class Scaled(LazyArray):
    """`base * factor` computed in fp32 and stored back in base's dtype (HF's scaled tied head)."""

    def __init__(self, base: LazyArray, factor: float) -> None:
        self.base, self.factor = base, float(factor)
        self.shape, self.dtype = base.shape, base.dtype

    def _read(self, index: Index) -> np.ndarray:
        return (self.base.read(index).astype(np.float32) * self.factor).astype(self.dtype)


def stack_layers(layers: Sequence[LazyArray], axis: int) -> LazyArray:
    """`StackedLayers`, except when the layers are every layer of one stack in order (a scanned
    checkpoint read by a scanned run): that stack itself, or a `Transposed` view of it when the
    run scans another axis (e.g. T5X's axis 1 read as axis 0), so a read stays one read."""
    first = layers[0]
    if (
        all(isinstance(x, LayerOf) for x in layers)
        and all(x.base is first.base and x.axis == first.axis for x in layers)
        and [x.layer for x in layers] == list(range(first.base.shape[first.axis]))
    ):
        if first.axis == axis:
            return first.base
        perm = [d for d in range(first.base.ndim) if d != first.axis]
        perm.insert(axis, first.axis)
        return Transposed(first.base, perm)
    return StackedLayers(layers, axis)


def equal(a: LazyArray, b: LazyArray, rows: int = 4096) -> bool:
    """Whether two arrays hold the same values, compared block by block (bounded memory)."""
    if a.shape != b.shape:
        return False
    if not a.shape:
        return bool(np.array_equal(a.read(), b.read()))
    for start in range(0, a.shape[0], rows):
        block = (slice(start, min(start + rows, a.shape[0])),)
        if not np.array_equal(a.read(block), b.read(block)):
            return False
    return True


def materialize(
    flat: Mapping[str, LazyArray], cast: Callable[[np.ndarray], np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Every array read whole (the numpy path), optionally passed through `cast`."""
    out = {}
    for path, array in flat.items():
        value = array.read()
        out[path] = cast(value) if cast is not None else value
    return out
