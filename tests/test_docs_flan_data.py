"""docs/flan_data.md's walk-through, executed as written: its files (blocks headed by a file
name) are written to an empty project directory and its commands (the `bash run` block) are
run there in order, in-process through `fiat_t5x.cli.main`, on the tiny model.

The doc's sample data lines are used as they are, plus generated lines of the same shape, so
a doc example that the source would reject fails here.
"""

from __future__ import annotations

import json
import logging
import pathlib
import re
import shlex

import pytest

from fiat_t5x import cli

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "flan_data.md"
BLOCK = re.compile(r"^```(\w+)(?: ([^\n]+))?\n(.*?)^```$", re.MULTILINE | re.DOTALL)
# Generated examples per split, in the doc's languages (a question with its answer options).
SPLIT_SIZES = {"train": 45, "validation": 9, "test": 9}
WORDS = {
    "bn": ("নদী", "পাহাড়", "শহর", "গ্রাম"),
    "sw": ("mto", "mlima", "mji", "kijiji"),
    "te": ("నది", "కొండ", "నగరం", "గ్రామం"),
}


def doc_blocks() -> tuple[dict[str, str], list[str]]:
    """(file name -> content, the commands of the `bash run` block, continuations joined)."""
    files, commands = {}, []
    for _language, header, body in BLOCK.findall(DOC.read_text(encoding="utf-8")):
        if header == "run":
            commands += [c.strip() for c in body.replace("\\\n", " ").splitlines() if c.strip()]
        elif header and ("/" in header or "." in header) and " " not in header:
            files[header] = body
    return files, commands


def generated_lines(split: str) -> list[str]:
    lines = []
    for i in range(SPLIT_SIZES[split]):
        language = sorted(WORDS)[i % 3]
        words = WORDS[language]
        answer = words[i % len(words)]
        record = {
            "id": f"{split}-{i}",
            "language": language,
            "question": f"{i}: {' '.join(words)}? {answer[::-1]}",
            "answer": answer,
        }
        if i % 2:  # half of the lines list options, as in the doc's sample
            record["options"] = list(words)
        lines.append(json.dumps(record, ensure_ascii=False))
    return lines


def test_the_doc_has_the_whole_user_path():
    files, commands = doc_blocks()
    assert {"my_tasks.py", "my_tasks.gin", "my_data/train.jsonl"} <= set(files)
    assert files["my_tasks.gin"].strip() == "import my_tasks"
    programs = [shlex.split(c)[:2] for c in commands if c.startswith("fiat-t5x")]
    assert [p[1] for p in programs] == [
        "check-vocab", "mixture-rates", "train", "eval", "infer", "score"
    ]  # fmt: skip


@pytest.mark.slow
def test_the_walk_through_runs_as_written(tmp_path, monkeypatch, capsys, caplog):
    files, commands = doc_blocks()
    for name, body in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")
    data = tmp_path / "my_data"
    for split in SPLIT_SIZES:
        shown = (
            (data / f"{split}.jsonl").read_text("utf-8").splitlines() if split == "train" else []
        )
        (data / f"{split}.jsonl").write_text(
            "\n".join(shown + generated_lines(split)) + "\n", encoding="utf-8"
        )
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.WARNING)
    outputs = {}
    for command in commands:
        argv = shlex.split(command)
        if argv[0] == "export":
            name, _, value = argv[1].partition("=")
            monkeypatch.setenv(name, value)
            if name == "PYTHONPATH":
                monkeypatch.syspath_prepend(str((tmp_path / value).resolve()))
            continue
        assert argv[0] == "fiat-t5x", command
        code = cli.main(argv[1:])
        out, err = capsys.readouterr()
        assert code == 0, f"{command}\n{out[-2000:]}\n{err[-3000:]}"
        outputs[argv[1]] = out
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]

    assert "| bn |" in outputs["check-vocab"] and "| te |" in outputs["check-vocab"]
    assert "my_qa_zsopt" in outputs["mixture-rates"]
    run = tmp_path / "runs" / "my_qa"
    assert (run / "checkpoint_10").is_dir()
    eval_rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/my_qa/exact_match/bn" in row for row in eval_rows), eval_rows[-1]
    predictions = [
        json.loads(line)
        for line in (run / "inference" / "my_qa-test.jsonl").read_text("utf-8").splitlines()
    ]
    assert len(predictions) == SPLIT_SIZES["test"]
    assert {p["language"] for p in predictions} == set(WORDS)
    assert all({"targets", "prediction", "id"} <= set(p) for p in predictions)
    for language in WORDS:  # score's per-language table
        assert f"| {language} |" in outputs["score"]
