"""Unit tests of templates, options formats, CoT answer forms and extraction, inversion checks,
few-shot assembly and mixture rates.

Expected values are worked out by hand from the definitions in the module docstrings; the
tf.data renderers are compared with the plain-Python ones.
"""

import dataclasses

import numpy as np
import pytest
import seqio
import tensorflow as tf

from fiat_t5x.data import cot, mixtures
from fiat_t5x.data.few_shot import (
    FewShotConfig,
    Prefixes,
    assemble_prompt_tf,
    choose_exemplars,
    longest_fitting,
    writes_own_labels,
)
from fiat_t5x.data.inversion import Inversion, cot_inversions, validate_inversions
from fiat_t5x.data.options import (
    FLAN_OPTIONS_SPACE,
    HEADERS,
    OptionsFormat,
    render_options_tf,
    with_options_placeholder,
    without_options,
)
from fiat_t5x.data.templates import (
    Template,
    TemplateError,
    parse_template,
    render_tf,
    stable_choice,
    validate_templates,
    weighted_choice,
)


def test_parse_template_splits_literals_and_fields():
    assert parse_template("Q: {question}? {{x}}") == (
        ("Q: ", None),
        ("", "question"),
        ("? {x}", None),
    )
    with pytest.raises(TemplateError, match="format spec"):
        parse_template("{answer:>3}")
    with pytest.raises(TemplateError, match="field name"):
        parse_template("{} and {0}")


def test_validation_names_template_and_field():
    templates = [
        Template("{question}", "{answer}"),
        Template("{question} {passage}", "{answer}", name="t2"),
    ]
    with pytest.raises(TemplateError) as err:
        validate_templates(templates, {"question", "answer"}, task="demo")
    message = str(err.value)
    assert "demo" in message and "t2" in message and "{passage}" in message


def test_render_tf_matches_str_format():
    templates = [Template("A {x} B", "{y}!"), Template("{y}/{x}", "{x}")]
    fields = {"x": tf.constant("one"), "y": tf.constant("two")}
    for index, template in enumerate(templates):
        inputs, targets = render_tf(templates, tf.constant(index), fields)
        assert (inputs.numpy().decode(), targets.numpy().decode()) == template.render(
            {"x": "one", "y": "two"}
        )


def test_stable_choice_is_deterministic_and_spreads():
    ids = [f"ex-{i}" for i in range(400)]
    seed = tf.constant([7, 11], tf.int64)
    first = [int(stable_choice(tf.constant(i), seed, "template", 5)) for i in ids]
    again = [int(stable_choice(tf.constant(i), seed, "template", 5)) for i in ids]
    other = [
        int(stable_choice(tf.constant(i), tf.constant([8, 11], tf.int64), "template", 5))
        for i in ids
    ]
    assert first == again
    assert first != other
    assert set(first) == set(range(5))
    assert min(first.count(k) for k in range(5)) > 40  # ~80 expected each


def test_weighted_choice_follows_its_weights():
    keys = tf.constant([f"ex-{i}" for i in range(3000)])
    seeds = tf.fill([3000], "1,2")
    drawn = weighted_choice(keys, seeds, "w", [1, 0, 3]).numpy().tolist()
    assert drawn.count(1) == 0
    share = drawn.count(2) / 3000  # 0.75 expected; 4.5 sigma ~ 0.036
    assert abs(share - 0.75) < 0.036


def test_options_formats_by_hand():
    space = FLAN_OPTIONS_SPACE
    assert space.size == 16 * 141 * 3 and len(HEADERS) == 16  # thousands of formats
    by_name = {m.name: m for m in space.markers}
    paren = by_name["'\\n' upper ({})"]
    inline_roman = by_name["' ' roman_lower {}:"]
    bullet = by_name["'\\n ' '- '"]
    options = ["red", "blue", "green"]
    assert (
        OptionsFormat("Choices:", paren, "").render(options)
        == "Choices:\n(A) red\n(B) blue\n(C) green"
    )
    assert OptionsFormat("", paren, ";").render(options) == "(A) red;\n(B) blue;\n(C) green;"
    assert OptionsFormat("Pick one:", inline_roman, ".").render(options) == (
        "Pick one: i: red. ii: blue. iii: green."
    )
    assert OptionsFormat("", bullet, "").render(options) == " - red\n - blue\n - green"
    # Distinct markers turn the answer into the label (without a final "." or ":").
    assert OptionsFormat("", paren, "").target_for("green", options) == "(C)"
    assert OptionsFormat("", inline_roman, "").target_for(" blue ", options) == "ii"
    assert OptionsFormat("", bullet, "").target_for("blue", options) == "blue"
    assert OptionsFormat("", paren, "").target_for("purple", options) == "purple"
    assert OptionsFormat("X:", paren, "").render([]) == ""


def test_options_graph_renderer_matches_python():
    options, answer = ["300", "992", " 1120", "552", "None of these"], "1120"
    for index in range(0, FLAN_OPTIONS_SPACE.size, 37):
        fmt = FLAN_OPTIONS_SPACE.format(index)
        block, target = render_options_tf(
            FLAN_OPTIONS_SPACE, tf.constant(index), tf.constant(options), tf.constant(answer)
        )
        assert block.numpy().decode() == fmt.render(options), index
        assert target.numpy().decode() == fmt.target_for(answer, options), index
    block, target = render_options_tf(
        FLAN_OPTIONS_SPACE, tf.constant(5), tf.constant([], tf.string), tf.constant("x")
    )
    assert (block.numpy(), target.numpy()) == (b"", b"x")


def test_options_and_no_options_forms():
    template = Template("Q: {question}\n{options}\nA:", "{answer}")
    assert without_options(template).inputs == "Q: {question}\nA:"
    appended = with_options_placeholder(Template("{question}", "{answer}"))
    assert appended.inputs == "{question}\n\n{options}"
    assert without_options(appended).inputs == "{question}"


@pytest.mark.parametrize("answer", ["4", "0.5", "(B)", "yes", "Sentence A", "$1,120", "B)"])
def test_every_answer_form_round_trips_through_the_extractor(answer):
    assert len(cot.ANSWER_SENTENCES) == 15 and len(cot.ANSWER_FORMS) == 30
    reasoning = "Earlier I thought the answer is 7, but no. Half of 1 is 0.5."
    expected = cot.normalize_answer(answer)
    for form in range(len(cot.ANSWER_FORMS)):
        target = reasoning + cot.answer_sentence(form, answer)
        assert cot.extract_answer(target) == answer, target
        # The postprocessor normalises "(B)" -> "B" on predictions and targets alike.
        assert cot.postprocess_cot(target.encode(), is_target=True) == expected
        assert cot.postprocess_cot(target + "\nQ: next question") == expected


@pytest.mark.parametrize(
    "text, answer",
    [
        ("Two plus two is 4. So the answer is 4.", "4"),
        ("The answer is maybe (B) but... so the answer is (C).", "(C)"),
        ("So the Answer is: yes.\nExtra line", "yes"),
        ("Reasoning.\nAnswer: (D)", "(D)"),
        ("reasoning. answer: no", "no"),
        ("That makes the final answer 12.", "12"),
        ("Final Answer: (1/2) - (1/3).", "(1/2) - (1/3)"),
        ("I cannot decide.", None),
    ],
)
def test_extract_answer(text, answer):
    assert cot.extract_answer(text) == answer


def test_normalize_answer_unwraps_one_bracket_pair_only():
    assert cot.normalize_answer(" (B) ") == "B"
    assert cot.normalize_answer("[iii]") == "iii"
    assert cot.normalize_answer("(1/2) - (1/3)") == "(1/2) - (1/3)"
    assert cot.postprocess_cot("no final answer") == "no final answer"


def test_cot_templates_must_end_with_an_extractable_sentence():
    cot.check_cot_templates([Template("{q}", cot.COT_TARGET)], "answer")
    cot.check_cot_templates([Template("{q}", "{r}\nThe final answer: {answer}.")], "answer")
    assert cot.format_cot("Dogs bark.", "yes") == "Dogs bark. So the answer is yes."
    with pytest.raises(TemplateError, match="must end with"):
        cot.check_cot_templates([Template("{q}", "{r} Therefore {answer}")], "answer")


def test_inversions_cover_flans_four_kinds_and_do_not_leak():
    fields = {"question", "answer", "chain_of_thought"}
    inversions = cot_inversions()
    validate_inversions(inversions, fields, task="t")
    assert {(i.given, i.asked) for i in inversions} == {
        (("answer", "chain_of_thought"), ("question",)),
        (("question", "answer"), ("chain_of_thought",)),
        (("chain_of_thought",), ("question", "answer")),
        (("answer",), ("question", "chain_of_thought")),
    }
    leaky = Inversion(
        "a->q",
        given=("answer",),
        asked=("question",),
        templates=(Template("{answer} {question}", "{question}"),),
    )
    with pytest.raises(TemplateError, match=r"\{question\}.*inputs"):
        validate_inversions([leaky], fields, task="t")
    silent = Inversion(
        "a->q", given=("answer",), asked=("question",), templates=(Template("{answer}", "ok"),)
    )
    with pytest.raises(TemplateError, match="does not produce"):
        validate_inversions([silent], fields, task="t")


def test_templates_that_write_their_own_labels_are_recognised():
    assert writes_own_labels(Template("Q: {question}", "{answer}"))
    assert writes_own_labels(Template("{question}\nA: Let's reason it out.", "{answer}"))
    assert writes_own_labels(Template("Solution, step by step:\n{question}", "{answer}"))
    assert writes_own_labels(Template("{answer}", "Q: {question}\nA: {answer}"))
    assert not writes_own_labels(Template("{question}\n{options}\nThink first.", "{answer}"))
    assert not writes_own_labels(
        Template("Using common sense and no web search, work this out:\n{question}", "{answer}")
    )
    with pytest.raises(ValueError, match="unlabelled"):
        FewShotConfig(prefixes=(Prefixes("Q: ", "A: "),))


def test_choose_exemplars_skips_self_and_wraps():
    ids = tf.constant(["a", "b", "c", "d"])
    chosen = choose_exemplars(ids, tf.constant(["c", "z", "a"]), tf.constant([1, 3, 0]), 2)
    assert chosen.numpy().tolist() == [[1, 3], [3, 0], [1, 2]]


def test_assemble_prompt_drops_exemplars_from_the_end():
    exemplars = [("Q: q1\nA: ", "a1"), ("Q: q2\nA: ", "a2")]
    full = "Q: q1\nA: a1\n\nQ: q2\nA: a2\n\nQ: x\nA:"
    assert longest_fitting(exemplars, "Q: x\nA: ", "\n\n", len, None) == (full, 2)
    assert longest_fitting(exemplars, "Q: x\nA: ", "\n\n", len, len(full)) == (full, 2)
    one = "Q: q1\nA: a1\n\nQ: x\nA:"
    assert longest_fitting(exemplars, "Q: x\nA: ", "\n\n", len, len(full) - 1) == (one, 1)
    assert longest_fitting(exemplars, "Q: x\nA: ", "\n\n", len, 3) == ("Q: x\nA:", 0)
    heads = tf.constant([h for h, _ in exemplars])
    targets = tf.constant([t for _, t in exemplars])
    lengths = lambda text: tf.strings.length(text)  # noqa: E731
    for budget in (None, len(full), len(full) - 1, 3):
        prompt, used = assemble_prompt_tf(
            heads, targets, tf.constant("Q: x\nA: "), tf.constant("\n\n"), lengths, budget
        )
        expected = longest_fitting(exemplars, "Q: x\nA: ", "\n\n", len, budget)
        assert (prompt.numpy().decode(), int(used)) == expected


def test_examples_proportional_rates_cap_and_temperature():
    counts = {"a": 100, "b": 400, "c": 10_000}
    assert mixtures.examples_proportional_rates(counts) == {"a": 100.0, "b": 400.0, "c": 10_000.0}
    assert mixtures.examples_proportional_rates(counts, cap=1000) == {
        "a": 100.0,
        "b": 400.0,
        "c": 1000.0,
    }
    assert mixtures.examples_proportional_rates(counts, cap=1000, temperature=2.0) == pytest.approx(
        {"a": 10.0, "b": 20.0, "c": 1000**0.5}
    )
    with pytest.raises(ValueError, match="temperature"):
        mixtures.examples_proportional_rates(counts, temperature=0)


def test_collection_rates_split_settings_and_add_inverted():
    rates = mixtures.collection_rates(
        {"t": 800}, prompt_settings={"zsopt": 3, "fsopt": 1}, cap=400, inverted_rate=0.3
    )
    assert rates == pytest.approx({"t_zsopt": 300.0, "t_fsopt": 100.0, "t_inverted": 120.0})
    rates = mixtures.collection_rates(
        {"t": 200},
        prompt_settings={"cot_fs": 1, "cot_fs_mix": 1},
        inverted_settings={"inverted_fs": 1, "inverted_fs_mix": 1},
    )
    assert rates == pytest.approx(
        {"t_cot_fs": 100, "t_cot_fs_mix": 100, "t_inverted_fs": 30, "t_inverted_fs_mix": 30}
    )


@pytest.fixture(scope="module")
def toy_tasks():
    vocab = seqio.ByteVocabulary()
    names = []
    for name in ("toy_mix_a", "toy_mix_b", "toy_mix_c", "toy_mix_d"):
        if name not in seqio.TaskRegistry.names():
            seqio.TaskRegistry.add(
                name,
                source=seqio.FunctionDataSource(
                    lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensors(
                        {"inputs": "x"}
                    ),
                    splits=["train"],
                ),
                preprocessors=[],
                output_features={"inputs": seqio.Feature(vocab)},
            )
        names.append(name)
    return names


def test_effective_rates_through_sub_mixtures(toy_tasks):
    a, b, c, _ = toy_tasks
    mixtures.register_rates_mixture("toy_sub", {a: 1.0, b: 3.0}, overwrite=True)
    top = mixtures.register_weighted_mixture("toy_top", {"toy_sub": 0.4, c: 0.6}, overwrite=True)
    shares = mixtures.effective_rates("toy_top")
    assert shares == pytest.approx({a: 0.1, b: 0.3, c: 0.6})
    # SeqIO's own rates agree once normalised.
    total = sum(top.get_rate(t) for t in top.tasks)
    assert {t.name: top.get_rate(t) / total for t in top.tasks} == pytest.approx(shares)
    with pytest.raises(ValueError, match="not registered"):
        mixtures.register_rates_mixture("toy_bad", {"no_such_task": 1.0})


def test_flan_collection_weights_with_user_collections(toy_tasks):
    a, b, c, d = toy_tasks
    mixtures.register_rates_mixture("toy_cot", {a: 1.0, b: 1.0}, overwrite=True)
    mixtures.register_flan_collections_mixture(
        "toy_flan", {"cot": "toy_cot", "niv2": c}, overwrite=True
    )
    # Only CoT (0.05) and NIv2 (0.20) given: renormalised to 0.2 / 0.8.
    assert mixtures.effective_rates("toy_flan") == pytest.approx({a: 0.1, b: 0.1, c: 0.8})
    weights = {**mixtures.FLAN_2022_COLLECTION_WEIGHTS, "mine": 0.25}
    mixtures.register_flan_collections_mixture(
        "toy_flan_mine", {"cot": "toy_cot", "mine": d}, weights=weights, overwrite=True
    )
    assert mixtures.effective_rates("toy_flan_mine") == pytest.approx(
        {a: 0.05 / 0.6, b: 0.05 / 0.6, d: 0.25 / 0.3}
    )
    with pytest.raises(ValueError, match=r"\['mine'\] have no weight"):
        mixtures.register_flan_collections_mixture("toy_flan_bad", {"mine": d})


def _toy_source(rows):
    def dataset_fn(split, shuffle_files=False, seed=None):
        del shuffle_files, seed
        return tf.data.Dataset.from_tensor_slices(
            {
                "id": [r[0] for r in rows],
                "question": [r[1] for r in rows],
                "answer": [r[2] for r in rows],
                "options": tf.ragged.constant([list(r[3]) for r in rows], dtype=tf.string),
            }
        )

    return seqio.FunctionDataSource(dataset_fn, splits=("train",))


def test_a_user_task_gets_the_variants_it_asks_for_and_clear_errors():
    from fiat_t5x.data.flan_variants import FlanTaskSpec, register_flan_variants, registered_variant

    rows = [
        (f"t-{i}", f"Is {i} even?", "yes" if i % 2 == 0 else "no", ("yes", "no")) for i in range(40)
    ]
    spec = FlanTaskSpec(
        name="toy_user",
        source=_toy_source(rows),
        fields=("id", "question", "answer"),
        templates=(
            Template("{question}\n{options}", "{answer}"),
            Template("Q: {question}", "{answer}"),
        ),
        variants=("zsopt", "fsopt_mix"),
    )
    names = register_flan_variants(spec, overwrite=True)
    assert names == {"zsopt": "toy_user_zsopt", "fsopt_mix": "toy_user_fsopt_mix"}
    few = registered_variant("toy_user_fsopt_mix")
    seeds = np.stack([np.zeros(8), np.arange(8)], axis=1)
    rendered = few.render(
        [dict(id=r[0], question=r[1], answer=r[2], options=list(r[3])) for r in rows[:8]], seeds
    )
    assert all(r.num_exemplars == 5 and "Is" in r.inputs for r in rendered)
    tiny = dataclasses.replace(spec, name="toy_tiny", source=_toy_source(rows[:5]))
    register_flan_variants(tiny, overwrite=True)
    with pytest.raises(ValueError, match="has 5 examples, too few to draw 5 exemplars"):
        registered_variant("toy_tiny_fsopt_mix").render(
            [dict(id="x", question="q", answer="a", options=[])], seeds[:1]
        )
    with pytest.raises(ValueError, match="variant 'cot_zs' is not available"):
        dataclasses.replace(spec, variants=("cot_zs",)).validate()
    with pytest.raises(TemplateError, match="reserved"):
        dataclasses.replace(spec, fields=("id", "question", "answer", "options")).validate()


def test_cot_variants_keep_the_tasks_own_postprocessor_for_its_metrics():
    """A spec with a metadata metric (XTREME-UP QA needs each target's language): its CoT
    variants must extract the final answer *and* keep the metadata, or scoring them fails."""
    from fiat_t5x.data import metrics
    from fiat_t5x.data.flan_variants import FlanTaskSpec, register_flan_variants
    from fiat_t5x.inference.scoring import score_predictions

    rows = [(f"m-{i}", f"Is {i} even?", "yes" if i % 2 == 0 else "no", ()) for i in range(30)]
    spec = FlanTaskSpec(
        name="toy_metric",
        source=_toy_source(rows),
        fields=("id", "question", "answer"),
        templates=(Template("{question}", "{answer}"),),
        cot_templates=(Template("{question} Think.", "{question}{answer_sentence}"),),
        postprocess_fn=metrics.postprocess_with_metadata,
        metric_fns=(metrics.xtreme_up_qa,),
        variants=("zsopt", "cot_zs"),
    )
    names = register_flan_variants(spec, overwrite=True)
    examples = [{"id": "m-1", "language": "sw"}, {"id": "m-2", "language": "bn"}]
    targets = ["Odd numbers are not even. The final answer: no.", "Two halves.\nAnswer: yes."]
    predictions = ["It is odd, so the answer is no.", "So the answer is (maybe)."]
    results = score_predictions(names["cot_zs"], examples, targets, predictions)
    assert results["exact_match/sw"] == 100.0 and results["exact_match/bn"] == 0.0
    direct = score_predictions(names["zsopt"], examples, ["no", "yes"], ["no", "maybe"])
    assert direct["exact_match/sw"] == 100.0 and direct["exact_match/bn"] == 0.0
