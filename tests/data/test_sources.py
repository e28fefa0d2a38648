"""Line-validated readers: every field kept, every broken line named by file and line."""

from __future__ import annotations

import json
import logging

import pytest
import tensorflow as tf

from fiat_t5x.data import sources


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_jsonl_records_keep_fields_file_and_line(tmp_path):
    path = _write(
        tmp_path / "a.jsonl",
        [json.dumps({"q": "কে?", "n": 1}), "", json.dumps({"q": "who?", "n": [2, 3]})],
    )
    records = sources.read_jsonl(path, required=("q",))
    assert [r.fields for r in records] == [{"q": "কে?", "n": 1}, {"q": "who?", "n": [2, 3]}]
    # The blank line 2 is skipped but line numbers stay those of the file.
    assert [(r.path, r.line) for r in records] == [(str(path), 1), (str(path), 3)]
    assert records[1]["q"] == "who?"
    assert records[1].location == f"{path}:3"


@pytest.mark.parametrize(
    ("line", "kwargs", "needle"),
    [
        ('{"q": "x",', {}, "bad JSON"),
        ("[1, 2]", {}, "expected a JSON object, got list"),
        ('{"r": "x"}', {"required": ("q",)}, "field 'q': missing field"),
        ('{"q": "  "}', {"non_empty": ("q",)}, "field 'q': empty value"),
        ('{"q": []}', {"non_empty": ("q",)}, "field 'q': empty value"),
        (
            '{"q": "x", "lang": "xx"}',
            {"language_field": "lang", "languages": ("bn", "te")},
            "field 'lang': unknown language code 'xx' (expected one of bn, te)",
        ),
    ],
)
def test_jsonl_errors_name_file_line_and_problem(tmp_path, line, kwargs, needle):
    path = _write(tmp_path / "bad.jsonl", ['{"q": "fine", "lang": "bn"}', line])
    with pytest.raises(sources.MalformedLineError) as info:
        sources.read_jsonl(path, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{path}:2: ")
    assert needle in message
    assert "skip_malformed=True" in message
    assert info.value.line == 2 and info.value.path == str(path)


def test_transform_errors_become_line_errors(tmp_path):
    path = _write(tmp_path / "t.jsonl", ['{"label": "true"}', '{"label": "maybe"}'])

    def parse_label(record):
        return {"label": {"true": True, "false": False}[record["label"]]}

    with pytest.raises(sources.MalformedLineError, match=r"t\.jsonl:2: KeyError: 'maybe'"):
        sources.read_jsonl(path, transform=parse_label)


def test_skip_malformed_counts_reports_and_warns(tmp_path, caplog):
    lines = ['{"q": "ok"}', "not json", '{"q": ""}', '{"q": "ok too"}'] + ["{"] * 6
    path = _write(tmp_path / "s.jsonl", lines)
    report = sources.SkipReport()
    with caplog.at_level(logging.WARNING, logger=sources.__name__):
        records = sources.read_jsonl(
            path, required=("q",), non_empty=("q",), skip_malformed=True, report=report
        )
    assert [r["q"] for r in records] == ["ok", "ok too"]
    assert (report.lines_read, report.kept, report.num_skipped) == (10, 2, 8)
    assert report.skipped[0][:2] == (str(path), 2)
    assert report.skipped[1] == (str(path), 3, "field 'q': empty value")
    summary = report.summary()
    assert "skipped 8 of 10 lines (kept 2)" in summary
    assert f"{path}:2 (bad JSON" in summary and "and 3 more" in summary
    assert any("skipped 8 of 10" in r.getMessage() for r in caplog.records)

    # The same report accumulates over a second file.
    sources.read_jsonl(_write(tmp_path / "s2.jsonl", ["x"]), skip_malformed=True, report=report)
    assert (report.lines_read, report.num_skipped) == (11, 9)


def test_tsv_columns_unescape_and_errors(tmp_path):
    path = _write(tmp_path / "c.tsv", ["Q?\\nOptions:\\n- yes\tyes\tbecause", "only\ttwo"])
    with pytest.raises(sources.MalformedLineError) as info:
        sources.read_tsv(path, columns=("question", "answer", "cot"))
    assert str(info.value).startswith(f"{path}:2: wrong column count: expected 3")
    assert "found 2" in str(info.value)

    report = sources.SkipReport()
    records = sources.read_tsv(
        path,
        columns=("question", "answer", "cot"),
        unescape_newlines=True,
        skip_malformed=True,
        report=report,
    )
    assert records[0].fields == {
        "question": "Q?\nOptions:\n- yes",
        "answer": "yes",
        "cot": "because",
    }
    assert report.num_skipped == 1

    empty = _write(tmp_path / "e.tsv", ["q\t \tc"])
    with pytest.raises(sources.MalformedLineError, match=r"e\.tsv:1: field 'answer': empty value"):
        sources.read_tsv(empty, columns=("question", "answer", "cot"), non_empty=("answer",))


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl: no such data file"):
        sources.read_jsonl(tmp_path / "nope.jsonl")


def test_records_data_source_yields_splits(tmp_path):
    path = _write(
        tmp_path / "d.jsonl",
        [
            json.dumps({"id": "a", "words": ["x", "y"], "extra": 1}),
            json.dumps({"id": "b", "words": ["z"]}),
        ],
    )
    calls = []

    def load(split):
        calls.append(split)
        return sources.read_jsonl(path) if split == "train" else []

    source = sources.records_data_source(
        load,
        splits=("train", "validation"),
        output_signature={
            "id": tf.TensorSpec([], tf.string),
            "words": tf.TensorSpec([None], tf.string),
        },
    )
    assert calls == []  # Lazy: nothing read at construction.
    assert set(source.splits) == {"train", "validation"}
    got = list(source.get_dataset("train").as_numpy_iterator())
    assert [g["id"] for g in got] == [b"a", b"b"]
    assert [list(g["words"]) for g in got] == [[b"x", b"y"], [b"z"]]
    assert "extra" not in got[0]
    assert list(source.get_dataset("validation").as_numpy_iterator()) == []
    with pytest.raises(ValueError, match="unknown split 'test'"):
        source.get_dataset("test")


def test_jsonl_data_source_reads_split_files_counts_and_names_bad_lines(tmp_path):
    train = _write(tmp_path / "train.jsonl", ['{"q": "a", "opts": ["x"]}', "", '{"q": "b"}'])
    bad = _write(tmp_path / "bad.jsonl", ['{"q": "a"}', '{"q": ""}', '{"q": "c"}'])
    signature = {"q": tf.TensorSpec([], tf.string), "opts": tf.TensorSpec([None], tf.string)}
    source = sources.jsonl_data_source(
        {"train": train, "test": [train, bad]},
        signature,
        non_empty=("q",),
        transform=lambda r: {"opts": [], **r.fields},
    )
    assert source.num_input_examples("train") == 2  # blank lines are not examples
    assert source.num_input_examples("test") == 5
    rows = list(source.get_dataset("train").as_numpy_iterator())
    assert [(r["q"], list(r["opts"])) for r in rows] == [(b"a", [b"x"]), (b"b", [])]
    with pytest.raises(sources.MalformedLineError) as info:
        source.get_dataset("test")
    assert str(info.value).startswith(f"{bad}:2: field 'q': empty value. Fix this line")
    assert str(info.value).endswith("--gin.malformed_lines.skip=True")


def test_gin_switch_skips_bad_lines_for_sources_that_ask(tmp_path):
    import gin

    bad = _write(tmp_path / "bad.jsonl", ['{"q": "a"}', '{"q": ""}', '{"q": "c"}'])
    signature = {"q": tf.TensorSpec([], tf.string)}
    asks = sources.jsonl_data_source({"train": bad}, signature, non_empty=("q",))
    fixed = sources.jsonl_data_source(
        {"train": bad}, signature, non_empty=("q",), skip_malformed=False
    )
    with gin.unlock_config():
        gin.parse_config("malformed_lines.skip = True")
    try:
        assert [r["q"] for r in asks.get_dataset("train").as_numpy_iterator()] == [b"a", b"c"]
        with pytest.raises(
            sources.MalformedLineError, match="skip_malformed=True to jsonl_data_source"
        ):
            fixed.get_dataset("train")
    finally:
        gin.clear_config()


def test_an_example_without_a_signature_field_names_its_line(tmp_path):
    path = _write(tmp_path / "a.jsonl", ['{"q": "a", "id": "1"}', '{"q": "b"}'])
    signature = {"q": tf.TensorSpec([], tf.string), "id": tf.TensorSpec([], tf.string)}
    source = sources.jsonl_data_source({"train": path}, signature)
    with pytest.raises(sources.MalformedLineError, match=r"a\.jsonl:2: lacks \['id'\]"):
        source.get_dataset("train")
