"""The bundled demo task: deterministic, low-data, multilingual, and scored per language."""

import collections
import re

import pytest
import seqio

from fiat_tasks import demo, demo_beta


def test_splits_are_deterministic_and_ids_unique():
    for split, size in demo.SPLIT_SIZES.items():
        first, second = demo.generate_split(split), demo.generate_split(split)
        assert first == second
        assert len({e.id for e in first}) == size
    questions = {s: {e.question for e in demo.generate_split(s)} for s in demo.SPLIT_SIZES}
    # Some overlap is possible by chance, but the splits must be mostly distinct.
    assert len(questions["train"] & questions["test"]) < 5


def _numbers(question: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", question)]


def _truth(example) -> tuple[bool, str]:
    """(is Ana's claim true?, which question is asked) worked out independently of the code."""
    a, b, claim = _numbers(example.question)
    subtract = any(w in example.question for w in ("gives", "verschenkt", "donne", "anatoa"))
    result = a - b if subtract else a + b
    assert result >= 0 and claim >= 0
    assert claim == result or 1 <= abs(claim - result) <= 10, example
    wrong_questions = ("Is she wrong?", "Irrt sie sich?", "A-t-elle tort ?", "Je, amekosea?")
    return claim == result, "wrong" if example.question.endswith(wrong_questions) else "right"


def test_answers_follow_from_the_arithmetic_and_the_question():
    for split in demo.SPLIT_SIZES:
        for example in demo.generate_split(split):
            claim_is_true, asks = _truth(example)
            assert example.answer == ("yes" if claim_is_true == (asks == "right") else "no")


def test_languages_kinds_and_labels_are_balanced():
    for split in demo.SPLIT_SIZES:
        examples = demo.generate_split(split)
        assert len(examples) >= 400
        languages = collections.Counter(e.language for e in examples)
        assert set(languages) == set(demo.LANGUAGES)
        assert len(set(languages.values())) == 1
        for language in demo.LANGUAGES:
            kinds = collections.Counter(_truth(e) for e in examples if e.language == language)
            assert len(kinds) == 4 and max(kinds.values()) - min(kinds.values()) <= 1
            labels = collections.Counter(e.answer for e in examples if e.language == language)
            assert abs(labels["yes"] - labels["no"]) <= 1, (split, language, labels)


def _final_answer(rationale: str) -> str:
    match = re.search(r", so the answer is (yes|no)\.$", rationale)
    assert match, rationale
    return match.group(1)


def test_scripted_beta_errs_exactly_where_the_readme_says():
    for split in demo.SPLIT_SIZES:
        for example in demo.generate_split(split):
            rationale = demo_beta.scripted_rationale(example.question)
            claim_is_true, asks = _truth(example)
            slipped = demo_beta.slips_on(example.question)
            # Its judgement of the claim is right unless it slipped...
            judged = re.search(r"so she is (right|wrong)\.", rationale).group(1)
            assert (judged == "right") == (claim_is_true != slipped)
            # ...and it answers the question it believes was asked: every question but the
            # Swahili "is she wrong?", which it reads as "is she right?".
            misread = example.language == "sw" and asks == "wrong"
            believed = "right" if misread else asks
            assert f"The question asks if she is {believed}," in rationale
            right = _final_answer(rationale) == example.answer
            assert right == (slipped == misread), (example, rationale)
    questions = [e.question for s in demo.SPLIT_SIZES for e in demo.generate_split(s)]
    slips = sum(map(demo_beta.slips_on, questions)) / len(questions)
    assert abs(slips - demo_beta.SLIP_RATE) < 0.02


def test_scripted_beta_writes_the_worked_check():
    rationale = demo_beta.scripted_rationale(
        "Ana has 56 apples and buys 77 more. She says she now has 133. Is she wrong?",
        slip_rate=0.0,
    )
    assert rationale == (
        "She buys 77 more, so we add: 56 + 77 = 133. She says 133, so she is right. "
        "The question asks if she is wrong, so the answer is no."
    )
    rationale = demo_beta.scripted_rationale(
        "Ana ana machungwa 48 na anatoa 34. Anasema sasa ana 16. Je, amekosea?", slip_rate=0.0
    )
    assert rationale.endswith(
        "48 - 34 = 14. She says 16, so she is wrong. "
        "The question asks if she is right, so the answer is no."
    )


def test_scripted_beta_says_it_is_a_script_and_answers_through_its_prompt():
    from fiat_tasks import fiat_demo_variants

    provider = demo_beta.ScriptedDemoBeta()
    assert provider.identity()["kind"] == "scripted"
    example = demo.generate_split("test")[0]
    prompt = fiat_demo_variants.demo_prompt().render(example.to_dict())
    ((key, outcome),) = list(provider.generate([("k", prompt)]))
    assert key == "k" and outcome.text == demo_beta.scripted_rationale(example.question)


def test_registering_the_demo_tasks_reads_no_store_and_runs_no_beta(monkeypatch, tmp_path):
    import importlib

    from fiat_tasks import fiat_demo_variants

    def forbidden(*args, **kwargs):
        raise AssertionError("registration called β")

    monkeypatch.setattr(demo_beta, "scripted_rationale", forbidden)
    monkeypatch.delenv("FIAT_RATIONALE_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    importlib.reload(fiat_demo_variants)
    assert "fiat_demo_fiat" in seqio.TaskRegistry.names()
    assert list(tmp_path.iterdir()) == []


def test_plain_task_feeds_question_to_answer():
    task = seqio.get_mixture_or_task(demo.PLAIN_TASK)
    dataset = task.get_dataset({"inputs": 128, "targets": 8}, split="test", shuffle=False)
    first = next(dataset.as_numpy_iterator())
    expected = demo.generate_split("test")[0]
    assert demo.VOCABULARY.decode(first["inputs"].tolist()) == expected.question
    assert demo.VOCABULARY.decode(first["targets"].tolist()) == expected.answer
    assert first["id"].decode() == expected.id


def test_metric_breaks_down_by_language():
    targets = [{"answer": "yes", "language": "en"}, {"answer": "no", "language": "de"}]
    assert demo.exact_match_by_language(targets, ["yes", " yes "]) == {
        "accuracy": 50.0,
        "accuracy/de": 0.0,
        "accuracy/en": 100.0,
    }


def test_jsonl_export_round_trips(tmp_path):
    import json

    paths = demo.write_jsonl(tmp_path)
    rows = [json.loads(line) for line in paths["validation"].read_text().splitlines()]
    assert rows == [e.to_dict() for e in demo.generate_split("validation")]
    assert not list(tmp_path.glob("*.tmp"))


def test_instruction_mixture_reads_generic_chain_of_thought_answers():
    from fiat_tasks import demo_instructions

    examples = demo_instructions.generate("cot_answer", "validation")
    answers = collections.Counter(e.targets for e in examples)
    assert len(answers) >= 5  # varied answer words, not only yes/no
    for example in examples:
        # The target is the word after the last "the answer is", as Flan's CoT targets end.
        final = re.findall(r"[Tt]he answer is (\w+)\.", example.inputs)[-1]
        assert example.targets == final
        assert not re.search(r"\d+ ?[-+] ?\d+|Ana has|apples|right|wrong", example.inputs)
        assert len(demo_instructions.VOCABULARY.encode(example.inputs)) < 80  # base's length


def test_demo_gin_passes_beta_and_base_as_plain_paths(tmp_path, monkeypatch):
    """Evaluating the demo's macros runs nothing: they are the paths the sweep's steps write."""
    import gin
    from fiat_t5x.training import gin_cli

    monkeypatch.chdir(tmp_path)
    args = gin_cli.parse_args(["--gin_file=fiat/demo.gin", "--gin.MODEL_DIR='m'"])
    gin_cli.parse_gin(args)
    try:
        assert gin.query_parameter("%RATIONALE_STORE") == "demo_out/sweep/beta_rationales/store"
        assert (
            gin.query_parameter("%INSTRUCTION_TUNED_CHECKPOINT_PATH")
            == "demo_out/sweep/instruction_base/base"
        )
    finally:
        gin.clear_config()
    assert list(tmp_path.iterdir()) == []


def test_building_fiat_data_without_the_store_fails_instead_of_calling_beta(tmp_path, monkeypatch):
    from fiat_tasks import fiat_demo_variants  # noqa: F401 - registers fiat_demo_fiat

    missing = tmp_path / "no_store"
    monkeypatch.setenv("FIAT_RATIONALE_STORE", str(missing))
    task = seqio.get_mixture_or_task("fiat_demo_fiat")
    with pytest.raises(Exception, match="no_store"):
        task.get_dataset({"inputs": 288, "targets": 4}, split="validation", shuffle=False)
    assert not missing.exists()


def test_demo_vocabulary_is_rebuilt_byte_for_byte_and_reads_every_language():
    from fiat_tasks import demo_vocab

    assert demo_vocab.build() == demo_vocab.VOCAB_FILE.read_bytes(), (
        "tasks/demo_spm.model is stale: run `python -m fiat_tasks.demo_vocab`"
    )
    vocabulary = demo_vocab.vocabulary()
    for split in demo.SPLIT_SIZES:
        for example in demo.generate_split(split)[:40]:
            rationale = demo_beta.scripted_rationale(example.question)
            for text in (example.question, rationale):
                assert vocabulary.decode(vocabulary.encode(text)) == text
    # The verdict is one piece, as in a Flan-T5 vocabulary; unseen text falls back to bytes.
    assert len(vocabulary.encode("yes")) == len(vocabulary.encode("no")) == 1
    assert vocabulary.decode(vocabulary.encode("Ω ñ 東京")) == "Ω ñ 東京"
