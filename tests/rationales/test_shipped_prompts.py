"""The Iβ files we ship parse, and render the fields their tasks really have; the demo task's
SeqIO split feeds a generation job directly (the `--task` without `--input` path)."""

from __future__ import annotations

import pathlib

import pytest

from fiat_t5x.rationales.examples import read_examples
from fiat_t5x.rationales.fake_openai import FakeOpenAIServer
from fiat_t5x.rationales.job import RationaleJob, run_job
from fiat_t5x.rationales.prompts import load_prompt
from fiat_t5x.rationales.providers.openai_http import OpenAIProvider
from fiat_t5x.rationales.store import RationaleStore

IBETA_DIR = pathlib.Path(__file__).resolve().parents[2] / "gin" / "fiat" / "ibeta"

# Field names from the task modules' docstrings (tasks/xor_attriqa.py, tasks/xtreme_up_qa.py).
XOR_FIELDS = ("query", "query_translated_en", "prediction", "prediction_translated_en", "passage")
XTREME_FIELDS = ("question", "title", "context")


@pytest.mark.parametrize(
    "name, fields",
    [("xor_attriqa", XOR_FIELDS + ("language",)), ("xtreme_up_qa", XTREME_FIELDS)],
)
def test_shipped_prompt_renders_its_task_fields(name, fields):
    spec = load_prompt(IBETA_DIR / f"{name}.yaml", name)
    example = {field: f"<{field} value>" for field in fields}
    prompt = spec.render(example)
    assert prompt.startswith(spec.instruction)
    assert len(spec.exemplars) == 4
    assert prompt.count(spec.answer_prefix) == 4  # one per exemplar, none for the query
    tail = prompt.rsplit(spec.example_separator, 1)[1]
    assert all(f"<{field} value>" in tail for field in fields if field != "language")
    assert tail.endswith(spec.x_y_delimiter)


def test_demo_split_through_a_job(tmp_path):
    import fiat_tasks.demo  # noqa: F401 - registers fiat_demo

    examples = read_examples(
        task="fiat_demo", split="validation", input_jsonl=None, id_field="id", limit=6
    )
    assert [e.example_id for e in examples] == [f"demo-validation-{i:04d}" for i in range(6)]
    spec = load_prompt(IBETA_DIR / "fiat_demo.yaml", "fiat_demo")
    for example in examples:
        prompt = spec.render(example.fields)
        assert prompt.endswith(f"Q: {example.fields['question']}\nA: ")
        if example.fields["language"] == "de":
            assert "verschenkt 4" in prompt and "gives 4 away" not in prompt
    with FakeOpenAIServer() as server:
        job = RationaleJob(
            store_dir=str(tmp_path / "store"),
            task="fiat_demo",
            ibeta_file=str(IBETA_DIR / "fiat_demo.yaml"),
            beta=OpenAIProvider(base_url=server.base_url, model="fake", api_key_env=""),
            splits=("validation",),
            import_modules=("fiat_tasks.demo",),
            limit=6,
            progress=False,
        )
        (summary,) = run_job(job)
    assert summary.generated == 6
    texts = RationaleStore.open_readonly(tmp_path / "store").texts("fiat_demo", "validation")
    assert set(texts) == {e.example_id for e in examples}
