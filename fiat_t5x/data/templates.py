"""Instruction templates: `(inputs, targets)` pairs with `{field}` placeholders.

A Flan task carries about ten templates; each example is rendered with one of them. The choice
is a stable hash (TensorFlow's Fingerprint64, identical on every machine and run) of the
example's id, the pipeline seed and a purpose tag, so the same (seed, example) always gets the
same template, and the chosen index travels with the example as a feature. The hashing helpers
take batches (`[N]` keys) as well as scalars, so the plain-Python renderer draws exactly the
choices the tf.data graph draws.

Rendering happens inside the tf.data graph (`render_tf`) so it runs in parallel after SeqIO's
cache point; `Template.render` is the plain-Python equivalent for users and tests.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import tensorflow as tf

# A parsed template: literal text and placeholder names in order, e.g.
# "Q: {question}?" -> (("Q: ", None), ("", "question"), ("?", None)).
Part = tuple[str, str | None]


class TemplateError(ValueError):
    """A template that cannot be used with a task (unknown field, bad placeholder syntax)."""


def parse_template(text: str) -> tuple[Part, ...]:
    """Splits `text` into literal and `{field}` parts; `{{` and `}}` are literal braces.

    Format specs and conversions (`{x:>3}`, `{x!r}`) and positional `{}` are rejected: they
    would mean something different in the tf.data renderer than in `str.format`.
    """
    parts: list[Part] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:
        raise TemplateError(f"template {text!r}: {e}") from e
    for literal, name, spec, conversion in parsed:
        if literal and parts and parts[-1][1] is None:
            parts[-1] = (parts[-1][0] + literal, None)  # "{{" splits literals; rejoin them.
        elif literal:
            parts.append((literal, None))
        if name is None:
            continue
        if not name or not name.isidentifier():
            raise TemplateError(
                f"template {text!r}: placeholder {{{name}}} must be a field name like {{question}}"
            )
        if spec or conversion:
            raise TemplateError(
                f"template {text!r}: placeholder {{{name}}} may not carry a format spec or "
                "conversion; format the field in a preprocessor instead"
            )
        parts.append(("", name))
    return tuple(parts)


def placeholders(text: str) -> tuple[str, ...]:
    """The field names a template text refers to, in order of first appearance."""
    seen: dict[str, None] = {}
    for _, name in parse_template(text):
        if name is not None:
            seen.setdefault(name)
    return tuple(seen)


@dataclasses.dataclass(frozen=True)
class Template:
    """One instruction template.

    Attributes:
      inputs: the prompt, e.g. "{question}\\n\\n{options}".
      targets: the expected output, e.g. "{answer}" or "{chain_of_thought} So the answer is {answer}.".
      name: optional label used in error messages (defaults to the index in its list).
    """

    inputs: str
    targets: str
    name: str = ""

    def fields(self) -> tuple[str, ...]:
        """Every field either side names."""
        return tuple(dict.fromkeys(placeholders(self.inputs) + placeholders(self.targets)))

    def render(self, fields: Mapping[str, object]) -> tuple[str, str]:
        """`(inputs, targets)` with placeholders filled by `str(fields[name])`."""
        values = {name: str(fields[name]) for name in self.fields()}
        return self.inputs.format(**values), self.targets.format(**values)


def describe(template: Template, index: int, kind: str) -> str:
    label = template.name or f"#{index}"
    return f"{kind} template {label} (inputs={template.inputs!r}, targets={template.targets!r})"


def validate_templates(
    templates: Sequence[Template],
    fields: Collection[str],
    *,
    task: str,
    kind: str = "zero-shot",
    inputs_fields: Collection[str] | None = None,
    targets_fields: Collection[str] | None = None,
) -> None:
    """Checks every placeholder against the fields the task declares.

    Args:
      templates: the templates to check; must not be empty.
      fields: the fields any side may use.
      task: task name for the error message.
      kind: what the templates are for ("zero-shot", "cot", "inversion answer->question"...).
      inputs_fields / targets_fields: tighter sets for one side (used by input inversion, where
        the inputs may only name the given fields and the targets only the asked ones).

    Raises:
      TemplateError: naming the task, the template and the offending field.
    """
    if not templates:
        raise TemplateError(f"task {task!r}: no {kind} templates given")
    for index, template in enumerate(templates):
        for side, text, allowed in (
            ("inputs", template.inputs, inputs_fields),
            ("targets", template.targets, targets_fields),
        ):
            allowed = fields if allowed is None else allowed
            for name in placeholders(text):
                if name not in allowed:
                    raise TemplateError(
                        f"task {task!r}: {describe(template, index, kind)} names field "
                        f"{{{name}}} in its {side}, which this side may not use; allowed fields: "
                        f"{', '.join(sorted(allowed))}. Fix the template or declare the field."
                    )


def seed_text(seed: tf.Tensor) -> tf.Tensor:
    """A seed pair as text, "s0,s1": `[..., 2]` int -> `[...]` tf.string."""
    return tf.strings.reduce_join(tf.strings.as_string(seed), axis=-1, separator=",")


def hashed_choice(
    keys: tf.Tensor, seed_texts: tf.Tensor, purpose: str, num_choices: int
) -> tf.Tensor:
    """Reproducible indices in [0, num_choices) (int32, the shape of `keys`).

    Args:
      keys: tf.string identifying what is chosen for (an example id, "id#3" for its 4th exemplar).
      seed_texts: `seed_text(seed)`, the same shape as `keys`.
      purpose: separates independent choices ("template", "options_marker", ...).
      num_choices: how many alternatives there are.
    """
    key = tf.strings.join([purpose + "|", seed_texts, "|", keys])
    return tf.cast(tf.strings.to_hash_bucket_fast(key, num_choices), tf.int32)


def weighted_choice(
    keys: tf.Tensor, seed_texts: tf.Tensor, purpose: str, weights: Sequence[int]
) -> tf.Tensor:
    """Like `hashed_choice`, with index i drawn with probability weights[i] / sum(weights)."""
    if not weights or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"weights {list(weights)}: need non-negative integers, some positive")
    bucket = hashed_choice(keys, seed_texts, purpose, int(sum(weights)))
    ends = tf.constant(np.cumsum(weights), tf.int32)
    return tf.reduce_sum(tf.cast(bucket[..., None] >= ends, tf.int32), axis=-1)


def stable_choice(
    example_id: tf.Tensor, seed: tf.Tensor, purpose: str, num_choices: int
) -> tf.Tensor:
    """A reproducible index in [0, num_choices) for one example (int32 scalar).

    Args:
      example_id: scalar tf.string identifying the example (its id or its content).
      seed: the pipeline seed (any integer tensor, e.g. SeqIO's [2] int64 seed pair).
      purpose: separates independent choices ("template", "options", "exemplars"...).
      num_choices: how many alternatives there are.
    """
    return hashed_choice(example_id, seed_text(tf.reshape(seed, [-1])), purpose, num_choices)


def _as_text(value: tf.Tensor) -> tf.Tensor:
    return value if value.dtype == tf.string else tf.strings.as_string(value)


def render_parts_tf(parts: Sequence[Part], fields: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """Joins literal parts and field tensors (scalars, or vectors rendered elementwise)."""
    if not parts:
        return tf.constant("")
    pieces = [
        tf.constant(literal) if name is None else _as_text(fields[name]) for literal, name in parts
    ]
    if len(pieces) == 1:
        return pieces[0] if pieces[0].dtype == tf.string else _as_text(pieces[0])
    return tf.strings.join(pieces)


def render_tf(
    templates: Sequence[Template],
    index: tf.Tensor,
    fields: Mapping[str, tf.Tensor],
    targets_fields: Mapping[str, tf.Tensor] | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Renders `templates[index]` in the tf.data graph.

    Args:
      templates: the candidates.
      index: int32 scalar selecting one.
      fields: field name -> scalar tensor used for the inputs side.
      targets_fields: values for the targets side, when they differ (e.g. the answer replaced
        by its option letter); defaults to `fields`.

    Returns:
      `(inputs, targets)` scalar tf.string tensors.
    """
    targets_fields = fields if targets_fields is None else targets_fields
    parsed = [(parse_template(t.inputs), parse_template(t.targets)) for t in templates]

    def branch(inputs_parts: Sequence[Part], targets_parts: Sequence[Part]):
        return lambda: (
            render_parts_tf(inputs_parts, fields),
            render_parts_tf(targets_parts, targets_fields),
        )

    if len(parsed) == 1:
        return branch(*parsed[0])()
    return tf.switch_case(index, [branch(i, t) for i, t in parsed])
