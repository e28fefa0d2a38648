"""Registers the Flan variants of a base task as ordinary SeqIO tasks.

From one `FlanTaskSpec` (a data source, the task's fields and its templates) the helper
`register_flan_variants` registers `<task>_<variant>` for each supported variant:

| variant | prompt |
|---|---|
| `zsopt` / `zsnoopt` | zero-shot direct answer, options listed in a drawn format / not added |
| `fsopt` / `fsnoopt` | few-shot (same template), with / without options |
| `fsopt_mix` / `fsnoopt_mix` | few-shot (5 exemplars, mixed templates), with / without options |
| `cot_zs` | CoT template (reasoning, then a drawn final-answer sentence), options listed |
| `cot_fs` / `cot_fs_mix` | few-shot CoT, same template / mixed templates, options listed |
| `inverted` | an input inversion (e.g. answer -> question), zero-shot |
| `inverted_fs` / `inverted_fs_mix` | few-shot input inversion, same / mixed templates |

The CoT variants exist when the spec has CoT templates, the inverted ones when it has
inversions; `spec.variants` narrows the set (the Flan CoT collection registers only CoT and
inverted variants, as Flan does). "No options" never removes choices that are part of the
question itself: `stem_fields` names the field shown instead of the question *only* when a
drawn options block lists the choices.

Pipeline of every variant: source -> the spec's deterministic preprocessors ->
`seqio.CacheDatasetPlaceholder()` -> Flan formatting (`flan_render.format_dataset`: seeded
choices, rendering, few-shot assembly, dropping few-shot examples left without an exemplar) ->
tokenize -> append EOS. Only the parsed fields are cached; everything that depends on the seed
runs after the cache point.

Features added to every example: `inputs`, `targets` (kept as `*_pretokenized`), `task`,
`format_seed` (the [2] seed its choices were drawn with), `template_index`, `options_format`
(-1: no options shown), `answer_form` (-1: not CoT), `fewshot_kind` (0 zero-shot, 1 same
template, 2 mixed), `delimiters`, `prefixes`, `separator` (-1 when unused), `num_shots` (the
exemplars drawn: matches among the candidates, or 5), `num_exemplars` (kept after the length
rule), and for few-shot variants `exemplar_ids` (the first `num_exemplars` were used).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from fiat_t5x.data import cot as cot_lib
from fiat_t5x.data.few_shot import (
    MIXED_TEMPLATES,
    SAME_TEMPLATE,
    ExemplarPool,
    FewShotConfig,
    dataset_rows,
)
from fiat_t5x.data.flan_render import Rendered, VariantFormatting, format_dataset, render_rows
from fiat_t5x.data.inversion import Inversion, flatten_inversions, validate_inversions
from fiat_t5x.data.options import (
    FLAN_OPTIONS_SPACE,
    OPTIONS_PLACEHOLDER,
    OptionsSpace,
    with_options_placeholder,
)
from fiat_t5x.data.templates import Template, TemplateError, validate_templates

logger = logging.getLogger(__name__)

DIRECT_VARIANTS = ("zsopt", "zsnoopt", "fsopt", "fsnoopt", "fsopt_mix", "fsnoopt_mix")
COT_VARIANTS = ("cot_zs", "cot_fs", "cot_fs_mix")
INVERTED_VARIANTS = ("inverted", "inverted_fs", "inverted_fs_mix")
VARIANTS = DIRECT_VARIANTS + COT_VARIANTS + INVERTED_VARIANTS


@dataclasses.dataclass(frozen=True)
class FlanTaskSpec:
    """Everything needed to register the Flan variants of one task.

    Attributes:
      name: base name; variants are `<name>_<variant>`.
      source: a SeqIO data source with the `train` split (exemplars) and any others.
      fields: the scalar text fields templates may name (besides `{options}`).
      templates: zero-shot templates answering directly (targets usually "{answer}").
      cot_templates: CoT templates; targets end with `{answer_sentence}` (a drawn final-answer
        form, `cot.COT_TARGET`) or with their own final-answer sentence.
      inversions: input inversions for the inverted variants.
      id_field: a unique, stable id per example (seeds every per-example choice).
      answer_field: the field replaced by an option label when the options format labels items.
      options_field: a list-of-strings field holding the answer options (None: no options).
      stem_fields: field -> the field shown instead when an options block lists the choices,
        e.g. {"question": "stem"}: the question without its own list (the block lists them).
      preprocessors: deterministic preprocessors run before the cache point (parsing, renaming).
      options_space / few_shot: the formatting alternatives drawn per example.
      exemplar_split: where few-shot exemplars come from.
      variants: the variants to register (None: every variant the templates support).
      postprocess_fn / metric_fns: of every variant; CoT variants first extract and normalise
        the final answer (`cot.postprocess_cot`), then apply `postprocess_fn` to it.
    """

    name: str
    source: seqio.DataSource
    fields: tuple[str, ...]
    templates: tuple[Template, ...]
    cot_templates: tuple[Template, ...] = ()
    inversions: tuple[Inversion, ...] = ()
    id_field: str = "id"
    answer_field: str = "answer"
    options_field: str | None = "options"
    stem_fields: Mapping[str, str] = dataclasses.field(default_factory=dict)
    preprocessors: tuple[Callable, ...] = ()
    options_space: OptionsSpace = FLAN_OPTIONS_SPACE
    few_shot: FewShotConfig = FewShotConfig()
    exemplar_split: str = "train"
    variants: tuple[str, ...] | None = None
    postprocess_fn: Callable | None = None
    metric_fns: tuple[Callable, ...] = ()

    def validate(self) -> None:
        """Raises TemplateError naming the template and field on any mismatch."""
        fields = set(self.fields)
        for required in (self.id_field, self.answer_field, *self.stem_fields.values()):
            if required not in fields:
                raise TemplateError(
                    f"task {self.name!r}: {required!r} (id/answer/stem field) is not among the "
                    f"declared fields {sorted(fields)}"
                )
        for field in self.stem_fields:
            if field not in fields:
                raise TemplateError(f"task {self.name!r}: stem_fields names unknown {field!r}")
        reserved = {OPTIONS_PLACEHOLDER, cot_lib.ANSWER_SENTENCE_FIELD} & fields
        if reserved:
            raise TemplateError(
                f"task {self.name!r}: field name(s) {sorted(reserved)} are reserved for the "
                "rendered options block and the final-answer sentence; rename them in `fields`"
            )
        allowed = fields | {OPTIONS_PLACEHOLDER}
        if self.templates:
            validate_templates(self.templates, allowed, task=self.name, kind="zero-shot")
        if self.cot_templates:
            cot_allowed = allowed | {cot_lib.ANSWER_SENTENCE_FIELD}
            validate_templates(self.cot_templates, cot_allowed, task=self.name, kind="cot")
            cot_lib.check_cot_templates(self.cot_templates, self.answer_field)
        validate_inversions(self.inversions, fields, task=self.name)
        supported = variant_formatting(self)
        for variant in self.variants or ():
            if variant not in supported:
                raise ValueError(
                    f"task {self.name!r}: variant {variant!r} is not available (known: "
                    f"{', '.join(VARIANTS)}; this spec supports {', '.join(supported)})"
                )
        if self.exemplar_split not in self.source.splits:
            raise ValueError(
                f"task {self.name!r}: exemplar split {self.exemplar_split!r} is not a split of "
                f"its source ({list(self.source.splits)})"
            )


# suffix -> (template group, options listed, few-shot kind)
_SHAPES: Mapping[str, tuple[str, bool, str | None]] = {
    "zsopt": ("direct", True, None),
    "zsnoopt": ("direct", False, None),
    "fsopt": ("direct", True, SAME_TEMPLATE),
    "fsnoopt": ("direct", False, SAME_TEMPLATE),
    "fsopt_mix": ("direct", True, MIXED_TEMPLATES),
    "fsnoopt_mix": ("direct", False, MIXED_TEMPLATES),
    "cot_zs": ("cot", True, None),
    "cot_fs": ("cot", True, SAME_TEMPLATE),
    "cot_fs_mix": ("cot", True, MIXED_TEMPLATES),
    "inverted": ("inverted", False, None),
    "inverted_fs": ("inverted", False, SAME_TEMPLATE),
    "inverted_fs_mix": ("inverted", False, MIXED_TEMPLATES),
}


def variant_formatting(spec: FlanTaskSpec) -> dict[str, VariantFormatting]:
    """variant suffix -> what it renders, for every variant this spec's templates support."""
    groups = {
        "direct": tuple(with_options_placeholder(t) for t in spec.templates),
        "cot": tuple(with_options_placeholder(t) for t in spec.cot_templates),
        "inverted": tuple(t for _, t in flatten_inversions(spec.inversions)),
    }
    return {
        suffix: VariantFormatting(
            suffix, groups[group], use_options=options, cot=group == "cot", few_shot=kind
        )
        for suffix, (group, options, kind) in _SHAPES.items()
        if groups[group]
    }


def selected_formatting(spec: FlanTaskSpec) -> dict[str, VariantFormatting]:
    """The variants `register_flan_variants` registers (all supported, or `spec.variants`)."""
    supported = variant_formatting(spec)
    if spec.variants is None:
        return supported
    return {v: supported[v] for v in spec.variants}


def load_split_rows(spec: FlanTaskSpec, split: str) -> list[dict]:
    """A split after the spec's preprocessors, as plain dicts, in source order."""
    return dataset_rows(_preprocessed(spec, split))


def _preprocessed(spec: FlanTaskSpec, split: str) -> tf.data.Dataset:
    ds = spec.source.get_dataset(split=split, shuffle=False)
    for preprocessor in spec.preprocessors:
        ds = preprocessor(ds)
    return ds


@dataclasses.dataclass(frozen=True)
class RegisteredVariant:
    """What a registered variant task renders (for the plain-Python renderer and reports)."""

    spec: FlanTaskSpec
    suffix: str
    formatting: VariantFormatting
    pool: ExemplarPool
    vocabulary: seqio.Vocabulary
    add_eos: bool

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` in the task's vocabulary (UTF-8 bytes for ByteVocabulary)."""
        if isinstance(self.vocabulary, seqio.ByteVocabulary):
            return len(text.encode("utf-8"))
        return len(self.vocabulary.encode(text))

    def render(
        self,
        rows: Sequence[Mapping[str, object]],
        seeds: np.ndarray,
        inputs_length: int | None = None,
    ) -> list[Rendered]:
        """Plain-Python rendering of `rows` (see `flan_render.render_rows`)."""
        budget = None if inputs_length is None else inputs_length - (1 if self.add_eos else 0)
        few_shot = self.formatting.few_shot is not None
        return render_rows(
            self.spec,
            self.formatting,
            rows,
            seeds,
            pool_rows=self.pool.rows() if few_shot else (),
            count_tokens=self.count_tokens,
            budget=budget if few_shot else None,
        )


_REGISTERED: dict[str, RegisteredVariant] = {}


def registered_variant(task_name: str) -> RegisteredVariant | None:
    """The Flan variant registered under `task_name` (None for other tasks)."""
    return _REGISTERED.get(task_name)


def few_shot_drops(
    task_name: str, inputs_length: int, *, split: str = "train", seed: int = 0
) -> tuple[int, int]:
    """`(dropped, total)`: examples of a few-shot variant left with no exemplar that fits.

    Rendered in plain Python with per-example seeds (seed, row); which examples drop depends on
    the seed, their number very little.
    """
    variant = registered_variant(task_name)
    if variant is None or variant.formatting.few_shot is None:
        raise ValueError(f"{task_name!r} is not a registered few-shot Flan variant")
    rows = load_split_rows(variant.spec, split)
    seeds = np.stack([np.full(len(rows), seed), np.arange(len(rows))], axis=1)
    rendered = variant.render(rows, seeds, inputs_length)
    return sum(r.dropped for r in rendered), len(rendered)


def register_flan_variants(
    spec: FlanTaskSpec,
    *,
    vocabulary: seqio.Vocabulary | None = None,
    add_eos: bool = True,
    overwrite: bool = False,
) -> dict[str, str]:
    """Validates `spec` and registers its variants; returns variant suffix -> task name.

    Args:
      spec: the base task.
      vocabulary: of the `inputs`/`targets` features and of the few-shot length count
        (default: `seqio.ByteVocabulary()`, which needs no model file; pass
        `seqio.SentencePieceVocabulary(path)` for T5/mT5 models).
      add_eos: append EOS to both features (and reserve a token for it when pruning exemplars).
      overwrite: replace already registered tasks of the same names instead of failing.
    """
    spec.validate()
    vocabulary = vocabulary or seqio.ByteVocabulary()
    output_features = {
        "inputs": seqio.Feature(vocabulary, add_eos=add_eos),
        "targets": seqio.Feature(vocabulary, add_eos=add_eos),
    }
    list_fields = (spec.options_field,) if spec.options_field else ()
    pool = ExemplarPool(
        lambda: _preprocessed(spec, spec.exemplar_split),
        id_field=spec.id_field,
        list_fields=list_fields,
        seed=spec.few_shot.pool_seed,
    )
    names: dict[str, str] = {}
    for suffix, formatting in selected_formatting(spec).items():
        name = f"{spec.name}_{suffix}"
        if name in seqio.TaskRegistry.names():
            if not overwrite:
                raise ValueError(
                    f"task {name!r} is already registered; pass overwrite=True to replace it"
                )
            seqio.TaskRegistry.remove(name)
        seqio.TaskRegistry.add(
            name,
            source=spec.source,
            preprocessors=[
                *spec.preprocessors,
                seqio.CacheDatasetPlaceholder(),
                functools.partial(
                    format_dataset,
                    spec=spec,
                    formatting=formatting,
                    pool=pool if formatting.few_shot else None,
                    task_name=name,
                ),
                seqio.preprocessors.tokenize,
                seqio.preprocessors.append_eos_after_trim,
            ],
            output_features=output_features,
            postprocess_fn=(
                cot_lib.cot_postprocessor(spec.postprocess_fn)
                if formatting.cot
                else spec.postprocess_fn
            ),
            metric_fns=list(spec.metric_fns),
        )
        _REGISTERED[name] = RegisteredVariant(spec, suffix, formatting, pool, vocabulary, add_eos)
        names[suffix] = name
    logger.info("registered Flan variants of %s: %s", spec.name, ", ".join(names.values()))
    return names


def variant_templates(spec: FlanTaskSpec, suffix: str) -> tuple[Template, ...]:
    """The templates `template_index` of variant `suffix` indexes (with `{options}` placed)."""
    return variant_formatting(spec)[suffix].templates


def variant_names(base: str, suffixes: Sequence[str] = VARIANTS) -> list[str]:
    """`<base>_<suffix>` for each suffix."""
    return [f"{base}_{s}" for s in suffixes]
