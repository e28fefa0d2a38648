"""The examples β is asked about: a JSONL file, or the raw source of a registered SeqIO task.

Iβ's templates read an example's raw fields, so a SeqIO task is read through its *source*
(before preprocessors). Ids are strings: the store is keyed by them.
"""

from __future__ import annotations

from typing import Any

from fiat_t5x.rationales.generate import Example
from fiat_t5x.training.gin_cli import UsageError


def read_examples(
    *,
    task: str,
    split: str,
    input_jsonl: str | None,
    id_field: str,
    limit: int | None,
) -> list[Example]:
    """Examples from a JSONL file (ids as strings), or from a registered SeqIO task's source."""
    if input_jsonl:
        from fiat_t5x.data.sources import read_jsonl

        records = read_jsonl(input_jsonl, required=(id_field,), non_empty=(id_field,))
        examples = [Example(str(r[id_field]), dict(r.fields)) for r in records]
    else:
        examples = _seqio_examples(task, split, id_field, limit)
    return examples[:limit] if limit is not None else examples


def _seqio_examples(task: str, split: str, id_field: str, limit: int | None) -> list[Example]:
    import seqio

    try:
        seqio_task = seqio.get_mixture_or_task(task)
    except ValueError:
        raise UsageError(
            f"{task!r} is not a registered SeqIO task; import its registration (gin: "
            "`import fiat_tasks.x`, CLI: --module fiat_tasks.x) or read a JSONL file (--input)"
        ) from None
    if split not in seqio_task.source.splits:
        raise UsageError(
            f"SeqIO task {task!r} has no split {split!r}; it has {list(seqio_task.source.splits)} "
            "(generation: set RATIONALE_SPLITS or --split to the splits it has)"
        )
    dataset = seqio_task.source.get_dataset(split=split, shuffle=False)
    if limit is not None:
        dataset = dataset.take(limit)
    examples = []
    for i, raw in enumerate(dataset.as_numpy_iterator()):
        fields = {k: _to_python(v) for k, v in raw.items()}
        if id_field not in fields:
            raise UsageError(
                f"SeqIO task {task!r} split {split!r} example {i} has no field {id_field!r} "
                f"(fields: {sorted(fields)}); set the id field (--id_field)"
            )
        examples.append(Example(str(fields[id_field]), fields))
    return examples


def _to_python(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [_to_python(v) for v in value]
    return value
