"""Renders Flan prompt variants: per-example choices, then text (plain Python or tf.data).

Every choice an example's prompt depends on (template, options format, final-answer sentence,
few-shot delimiters, prefixes, separator, exemplars and their own templates/formats) is drawn
by `draw_choices`, a batch of stable hashes of (example id, seed, purpose) in TensorFlow ops.
The tf.data graph (`format_dataset`) calls it for one example at a time; the plain-Python
renderer (`render_rows`) calls it eagerly for thousands of rows at once and then renders with
`str.format`. Both therefore make the same choices, and the Python side is the readable
reference the graph is tested against. The graph records its per-example seed (`format_seed`)
so any of its examples can be re-rendered in Python.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from fiat_t5x.data import cot as cot_lib
from fiat_t5x.data.few_shot import (
    MIXED_TEMPLATES,
    SAME_TEMPLATE,
    ExemplarPool,
    assemble_prompt_tf,
    choose_exemplars,
    exemplar_head,
    longest_fitting,
    writes_own_labels,
)
from fiat_t5x.data.options import OPTIONS_PLACEHOLDER, render_options_tf, without_options
from fiat_t5x.data.templates import (
    Template,
    hashed_choice,
    render_tf,
    seed_text,
    weighted_choice,
)

NO_CHOICE = -1
FEW_SHOT_KIND_CODES = {None: 0, SAME_TEMPLATE: 1, MIXED_TEMPLATES: 2}


@dataclasses.dataclass(frozen=True)
class VariantFormatting:
    """What one variant renders.

    Attributes:
      name: the variant suffix ("cot_fs"); it salts every draw, so that the variants of one
        example (with one seed) make independent choices.
      templates: the templates `template_index` indexes (with `{options}` placed when
        `use_options`).
      use_options: list the options (in a drawn format) when the example has any.
      cot: fill `{answer_sentence}` with a drawn final-answer form.
      few_shot: None (zero-shot), "same" or "mixed" (see `few_shot`).
    """

    name: str
    templates: tuple[Template, ...]
    use_options: bool
    cot: bool = False
    few_shot: str | None = None

    @functools.cached_property
    def noopt_templates(self) -> tuple[Template, ...]:
        return tuple(without_options(t) for t in self.templates)

    @functools.cached_property
    def prefixes_allowed(self) -> tuple[bool, ...]:
        """Per template: may a labelled prefix pair be added (it writes no labels itself)?"""
        return tuple(
            not (writes_own_labels(t) or writes_own_labels(n))
            for t, n in zip(self.templates, self.noopt_templates, strict=True)
        )


def _keys(ids: tf.Tensor, count: int) -> tf.Tensor:
    """[N] ids -> [N, count] keys "id#0", "id#1", ... for per-exemplar draws."""
    suffixes = tf.constant([f"#{j}" for j in range(count)])
    return tf.strings.join(
        [tf.repeat(ids[:, None], count, axis=1), tf.tile(suffixes[None], [tf.shape(ids)[0], 1])]
    )


def _tile(values: tf.Tensor, count: int) -> tf.Tensor:
    return tf.repeat(values[:, None], count, axis=1)


def check_pool_size(spec, formatting: VariantFormatting, pool_size: int) -> None:
    """Exemplars are drawn without repeats and never the example itself: the pool must be larger
    than the number drawn (25 candidates, or 5 mixed shots)."""
    fs = spec.few_shot
    drawn = fs.candidates if formatting.few_shot == SAME_TEMPLATE else fs.mixed_shots
    if pool_size <= drawn:
        raise ValueError(
            f"task {spec.name!r}: the {spec.exemplar_split!r} split has {pool_size} examples, too "
            f"few to draw {drawn} exemplars that exclude the example itself; use more data or "
            "lower FewShotConfig.candidates / mixed_shots"
        )


def draw_choices(
    spec, formatting: VariantFormatting, ids: tf.Tensor, seeds: tf.Tensor, pool_ids=None
) -> dict[str, tf.Tensor]:
    """Every per-example choice of a batch.

    Args:
      spec: the task's `FlanTaskSpec`.
      formatting: the variant.
      ids: [N] tf.string example ids; seeds: [N, 2] integer seed pairs.
      pool_ids: [pool_size] tf.string exemplar ids (few-shot variants).

    Returns:
      name -> int32 tensor: `template_index`, `options_format`, `answer_form` ([N]); for few-shot
      variants also `delimiters`, `prefixes`, `separator`, `num_shots` ([N]) and
      `exemplar_index` (pool positions, -1 padded), `exemplar_template`,
      `exemplar_options_format`, `exemplar_answer_form`, `exemplar_delimiters`,
      `exemplar_prefixes` ([N, max_shots]).
    """
    texts = seed_text(seeds)
    keys = tf.strings.join([formatting.name + ":", ids])  # salted: variants draw independently
    num_templates = len(formatting.templates)
    allowed = tf.constant(formatting.prefixes_allowed)
    space = spec.options_space
    fs = spec.few_shot

    def prefixes_for(draw_keys, seed_texts, templates):
        drawn = weighted_choice(draw_keys, seed_texts, "prefixes", [p.weight for p in fs.prefixes])
        return tf.where(tf.gather(allowed, templates), drawn, 0)

    template = hashed_choice(keys, texts, "template", num_templates)
    out = {
        "template_index": template,
        "options_format": space.draw(keys, texts),
        "answer_form": hashed_choice(keys, texts, "answer_form", len(cot_lib.ANSWER_FORMS)),
    }
    if formatting.few_shot is None:
        return out
    if pool_ids is None:
        raise ValueError("few-shot choices need the exemplar pool's ids")
    pool_size = int(pool_ids.shape[0])
    delimiters = weighted_choice(keys, texts, "delimiters", [d.weight for d in fs.delimiters])
    out["delimiters"] = delimiters
    out["prefixes"] = prefixes_for(keys, texts, template)
    start = hashed_choice(keys, texts, "exemplars", pool_size)
    shots = fs.max_shots(formatting.few_shot)
    if formatting.few_shot == SAME_TEMPLATE:
        candidates = choose_exemplars(pool_ids, ids, start, fs.candidates)  # [N, C]
        candidate_templates = hashed_choice(
            _keys(keys, fs.candidates),
            _tile(texts, fs.candidates),
            "candidate_template",
            num_templates,
        )
        match = tf.equal(candidate_templates, template[:, None])
        kept = tf.ragged.boolean_mask(candidates, match)
        out["num_shots"] = tf.cast(kept.row_lengths(), tf.int32)
        out["exemplar_index"] = kept[:, :shots].to_tensor(NO_CHOICE, shape=[None, shots])
        out["exemplar_template"] = _tile(template, shots)
        out["exemplar_answer_form"] = _tile(out["answer_form"], shots)
        out["exemplar_delimiters"] = _tile(delimiters, shots)
        out["exemplar_prefixes"] = _tile(out["prefixes"], shots)
        out["separator"] = tf.fill(tf.shape(template), NO_CHOICE)
    else:
        slots, slot_texts = _keys(keys, shots), _tile(texts, shots)
        templates = hashed_choice(slots, slot_texts, "template", num_templates)
        out["num_shots"] = tf.fill(tf.shape(template), shots)
        out["exemplar_index"] = choose_exemplars(pool_ids, ids, start, shots)
        out["exemplar_template"] = templates
        out["exemplar_answer_form"] = hashed_choice(
            slots, slot_texts, "answer_form", len(cot_lib.ANSWER_FORMS)
        )
        out["exemplar_delimiters"] = weighted_choice(
            slots, slot_texts, "delimiters", [d.weight for d in fs.delimiters]
        )
        out["exemplar_prefixes"] = prefixes_for(slots, slot_texts, templates)
        out["separator"] = hashed_choice(keys, texts, "separator", len(fs.mixed_separators))
    out["exemplar_options_format"] = space.draw(_keys(keys, shots), _tile(texts, shots))
    return out


# ---------------------------------------------------------------- plain Python


@dataclasses.dataclass(frozen=True)
class Rendered:
    """One rendered example (plain Python): text and the choices it was made with."""

    inputs: str
    targets: str
    choices: Mapping[str, object]
    num_exemplars: int = 0
    exemplar_ids: tuple[str, ...] = ()

    @property
    def dropped(self) -> bool:
        """A few-shot example with no exemplar (FLAN's `filter_zero_shot_in_few_shot`)."""
        return self.choices.get("num_shots") is not None and self.num_exemplars == 0


def render_item(
    spec,
    formatting: VariantFormatting,
    row: Mapping[str, object],
    template_index: int,
    options_format: int,
    answer_form: int,
) -> tuple[str, str]:
    """`(inputs, targets)` of one example or exemplar with the given choices."""
    values = {name: str(row[name]) for name in spec.fields}
    answer = values[spec.answer_field]
    options = list(row[spec.options_field]) if spec.options_field else []
    if formatting.use_options and options:
        fmt = spec.options_space.format(options_format)
        answer = fmt.target_for(answer, options)
        values.update({field: str(row[stem]) for field, stem in spec.stem_fields.items()})
        values[OPTIONS_PLACEHOLDER] = fmt.render(options)
        template = formatting.templates[template_index]
    else:
        template = formatting.noopt_templates[template_index]
    if formatting.cot:
        values[cot_lib.ANSWER_SENTENCE_FIELD] = cot_lib.answer_sentence(answer_form, answer)
    targets_values = {**values, spec.answer_field: answer}
    return template.inputs.format(**values), template.targets.format(**targets_values)


def render_rows(
    spec,
    formatting: VariantFormatting,
    rows: Sequence[Mapping[str, object]],
    seeds: np.ndarray,
    *,
    pool_rows: Sequence[Mapping[str, object]] = (),
    count_tokens: Callable[[str], int] | None = None,
    budget: int | None = None,
) -> list[Rendered]:
    """Renders `rows` in plain Python with exactly the choices the tf.data graph makes.

    Args:
      spec / formatting: the task and the variant.
      rows: examples as dicts of the spec's fields (lists for the options field).
      seeds: [len(rows), 2] integer seed pairs (a graph example's `format_seed`).
      pool_rows: the exemplar pool in its fixed order (`ExemplarPool.rows()`).
      count_tokens / budget: the inputs length rule (None: no limit).
    """
    ids = tf.constant([str(r[spec.id_field]) for r in rows], tf.string, shape=[len(rows)])
    pool_ids = None
    if formatting.few_shot is not None:
        check_pool_size(spec, formatting, len(pool_rows))
        pool_ids = tf.constant([str(r[spec.id_field]) for r in pool_rows], tf.string)
    choices = {
        k: v.numpy()
        for k, v in draw_choices(
            spec, formatting, ids, tf.constant(seeds, tf.int64), pool_ids
        ).items()
    }
    shown = formatting.use_options and spec.options_field is not None
    out = []
    for i, row in enumerate(rows):
        mine = {k: v[i] for k, v in choices.items()}
        has_options = shown and len(row[spec.options_field]) > 0
        recorded = {
            "template_index": int(mine["template_index"]),
            "options_format": int(mine["options_format"]) if has_options else NO_CHOICE,
            "answer_form": int(mine["answer_form"]) if formatting.cot else NO_CHOICE,
        }
        inputs, targets = render_item(
            spec,
            formatting,
            row,
            mine["template_index"],
            mine["options_format"],
            mine["answer_form"],
        )
        if formatting.few_shot is None:
            out.append(Rendered(inputs, targets, recorded))
            continue
        fs = spec.few_shot
        exemplars, exemplar_ids = [], []
        for j, index in enumerate(mine["exemplar_index"]):
            if index == NO_CHOICE:
                break
            ex_inputs, ex_targets = render_item(
                spec,
                formatting,
                pool_rows[index],
                mine["exemplar_template"][j],
                mine["exemplar_options_format"][j],
                mine["exemplar_answer_form"][j],
            )
            head = exemplar_head(
                ex_inputs,
                fs.delimiters[mine["exemplar_delimiters"][j]],
                fs.prefixes[mine["exemplar_prefixes"][j]],
            )
            exemplars.append((head, ex_targets))
            exemplar_ids.append(str(pool_rows[index][spec.id_field]))
        delimiters = fs.delimiters[mine["delimiters"]]
        if formatting.few_shot == SAME_TEMPLATE:
            separator = delimiters.example_separator
        else:
            separator = fs.mixed_separators[mine["separator"]]
        final = exemplar_head(inputs, delimiters, fs.prefixes[mine["prefixes"]])
        prompt, used = longest_fitting(exemplars, final, separator, count_tokens, budget)
        recorded.update(
            {k: int(mine[k]) for k in ("delimiters", "prefixes", "separator", "num_shots")}
        )
        out.append(Rendered(prompt, targets, recorded, used, tuple(exemplar_ids[:used])))
    return out


# ---------------------------------------------------------------- tf.data


def _budget(sequence_length: Mapping[str, int] | None, output_features) -> int | None:
    if not sequence_length or sequence_length.get("inputs") is None:
        return None
    feature = output_features["inputs"]
    return int(sequence_length["inputs"]) - (1 if feature.add_eos else 0)


# (joiners, text before the answer, text after it) of every answer form, for the graph.
_ANSWER_FORM_PARTS = tuple(
    zip(*((j, *cot_lib.split_sentence(s)) for j, s in cot_lib.ANSWER_FORMS), strict=True)
)


def render_item_tf(
    spec, formatting: VariantFormatting, row: Mapping[str, tf.Tensor], template, fmt, form
) -> tuple[tf.Tensor, tf.Tensor]:
    """The graph version of `render_item` (scalar choices)."""
    scalars = {name: row[name] for name in spec.fields}
    answer = row[spec.answer_field]
    plain_answer = answer

    def with_sentence(values, answer_text):
        if not formatting.cot:
            return values
        joiner, head, tail = (tf.gather(tf.constant(part), form) for part in _ANSWER_FORM_PARTS)
        sentence = tf.strings.join([joiner, head, answer_text, tail])
        return {**values, cot_lib.ANSWER_SENTENCE_FIELD: sentence}

    plain_values = with_sentence(scalars, plain_answer)
    plain = render_tf(
        formatting.noopt_templates,
        template,
        plain_values,
        {**plain_values, spec.answer_field: plain_answer},
    )
    if not (formatting.use_options and spec.options_field is not None):
        return plain
    options = row[spec.options_field]
    block, labelled = render_options_tf(spec.options_space, fmt, options, answer)
    values = {**scalars, **{f: row[s] for f, s in spec.stem_fields.items()}}
    values[OPTIONS_PLACEHOLDER] = block
    values = with_sentence(values, labelled)
    listed = render_tf(
        formatting.templates, template, values, {**values, spec.answer_field: labelled}
    )
    shown = tf.size(options) > 0
    return tf.where(shown, listed[0], plain[0]), tf.where(shown, listed[1], plain[1])


def format_dataset(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int] | None,
    output_features: Mapping[str, seqio.Feature],
    *,
    spec,
    formatting: VariantFormatting,
    pool: ExemplarPool | None,
    task_name: str = "",
) -> tf.data.Dataset:
    """The seeded Flan formatting step of a variant's pipeline (after the cache point)."""
    few_shot = formatting.few_shot
    fs = spec.few_shot
    budget = _budget(sequence_length, output_features) if few_shot else None
    vocabulary = output_features["inputs"].vocabulary
    count_tokens = None
    if budget is not None:
        count_tokens = lambda text: tf.size(vocabulary.encode_tf(text), out_type=tf.int32)  # noqa: E731
    pool_tensors = pool.tensors() if few_shot else None
    if few_shot:
        check_pool_size(spec, formatting, pool.size())
    delimiter_table = {
        "x_y": tf.constant([d.x_y_delimiter for d in fs.delimiters]),
        "separator": tf.constant([d.example_separator for d in fs.delimiters]),
    }
    prefix_table = {
        "inputs": tf.constant([p.inputs_prefix for p in fs.prefixes]),
        "targets": tf.constant([p.targets_prefix for p in fs.prefixes]),
    }

    def head_tf(inputs, delimiters, prefixes):
        return tf.strings.join(
            [
                tf.gather(prefix_table["inputs"], prefixes),
                inputs,
                tf.gather(delimiter_table["x_y"], delimiters),
                tf.gather(prefix_table["targets"], prefixes),
            ]
        )

    shown = formatting.use_options and spec.options_field is not None

    @seqio.map_over_dataset(num_seeds=1)
    @tf.autograph.experimental.do_not_convert  # Plain graph code; converting it is slow.
    def format_example(example, seed):
        seed = tf.cast(tf.reshape(seed, [2]), tf.int64)
        pool_ids = pool_tensors[spec.id_field] if few_shot else None
        choices = draw_choices(spec, formatting, example[spec.id_field][None], seed[None], pool_ids)
        mine = {k: v[0] for k, v in choices.items()}
        inputs, targets = render_item_tf(
            spec,
            formatting,
            example,
            mine["template_index"],
            mine["options_format"],
            mine["answer_form"],
        )
        out = dict(example)
        out["task"] = tf.constant(task_name)
        out["format_seed"] = seed
        out["template_index"] = mine["template_index"]
        has_options = tf.size(example[spec.options_field]) > 0 if shown else tf.constant(False)
        out["options_format"] = tf.where(has_options, mine["options_format"], NO_CHOICE)
        out["answer_form"] = mine["answer_form"] if formatting.cot else tf.constant(NO_CHOICE)
        out["fewshot_kind"] = tf.constant(FEW_SHOT_KIND_CODES[few_shot])
        for name in ("delimiters", "prefixes", "separator", "num_shots"):
            out[name] = (
                mine[name] if few_shot else tf.constant(0 if name == "num_shots" else NO_CHOICE)
            )
        out["num_exemplars"] = tf.constant(0)
        if few_shot:
            count = tf.reduce_sum(tf.cast(mine["exemplar_index"] >= 0, tf.int32))

            def exemplar(j):
                index = mine["exemplar_index"][j]
                row = {name: tf.gather(values, index) for name, values in pool_tensors.items()}
                ex_inputs, ex_targets = render_item_tf(
                    spec,
                    formatting,
                    row,
                    mine["exemplar_template"][j],
                    mine["exemplar_options_format"][j],
                    mine["exemplar_answer_form"][j],
                )
                head = head_tf(
                    ex_inputs, mine["exemplar_delimiters"][j], mine["exemplar_prefixes"][j]
                )
                return head, ex_targets

            heads, ex_targets = tf.map_fn(
                exemplar, tf.range(count), fn_output_signature=(tf.string, tf.string)
            )
            if few_shot == SAME_TEMPLATE:
                separator = tf.gather(delimiter_table["separator"], mine["delimiters"])
            else:
                separator = tf.gather(tf.constant(fs.mixed_separators), mine["separator"])
            final = head_tf(inputs, mine["delimiters"], mine["prefixes"])
            inputs, used = assemble_prompt_tf(
                heads, ex_targets, final, separator, count_tokens, budget
            )
            out["num_exemplars"] = used
            ids = tf.gather(pool_ids, tf.maximum(mine["exemplar_index"], 0))
            out["exemplar_ids"] = tf.where(tf.range(tf.size(ids)) < used, ids, "")
        out["inputs"] = inputs
        out["targets"] = targets
        return out

    formatted = format_example(dataset)
    if few_shot:
        formatted = formatted.filter(lambda ex: ex["num_exemplars"] > 0)
    return formatted
