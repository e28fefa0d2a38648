"""The Hugging Face `datasets` source on local files and directories (never the network):
the same fields, list features and row-validated errors as the JSON-lines source."""

from __future__ import annotations

import json
import os

import pytest
import tensorflow as tf

from fiat_t5x.data import hf_source, sources

datasets = pytest.importorskip("datasets")

TEXT = tf.TensorSpec([], tf.string)
SIGNATURE = {
    "id": TEXT,
    "language": TEXT,
    "question": TEXT,
    "options": tf.TensorSpec([None], tf.string),
    "answer": TEXT,
}
ROWS = [
    {"id": "a", "language": "bn", "question": "কে?", "options": ["x", "y"], "answer": "x"},
    {"id": "b", "language": "sw", "question": "nani?", "options": [], "answer": "y"},
    {"id": "c", "language": "bn", "question": "কি?", "options": ["z"], "answer": "z"},
]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def _examples(source, split="train"):
    out = []
    for example in source.get_dataset(split, shuffle=False).as_numpy_iterator():
        row = {}
        for key, value in example.items():
            if hasattr(value, "tolist"):
                value = value.tolist()
            if isinstance(value, list):
                value = [v.decode() for v in value]
            elif isinstance(value, bytes):
                value = value.decode()
            row[key] = value
        out.append(row)
    return out


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return str(path)


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "arrow", "save_to_disk", "repository"])
def test_every_local_layout_yields_the_rows(kind, tmp_path):
    table = datasets.Dataset.from_list(ROWS)
    if kind == "jsonl":
        data = {"train": _jsonl(tmp_path / "train.jsonl", ROWS)}
    elif kind == "parquet":
        table.to_parquet(str(tmp_path / "train.parquet"))
        data = {"train": str(tmp_path / "train.parquet")}
    elif kind == "arrow":
        table.save_to_disk(str(tmp_path / "saved_one"))
        (arrow,) = [f for f in os.listdir(tmp_path / "saved_one") if f.endswith(".arrow")]
        data = {"train": str(tmp_path / "saved_one" / arrow)}
    elif kind == "save_to_disk":
        datasets.DatasetDict({"train": table, "test": table}).save_to_disk(str(tmp_path / "saved"))
        data = str(tmp_path / "saved")
    else:  # a dataset repository as `huggingface-cli download` leaves it: files name splits
        (tmp_path / "repo" / "data").mkdir(parents=True)
        table.to_parquet(str(tmp_path / "repo" / "data" / "train-00000-of-00001.parquet"))
        data = str(tmp_path / "repo")
    splits = ("train",) if isinstance(data, str) else None
    source = hf_source.hf_data_source(data, SIGNATURE, splits=splits, required=("question",))
    assert _examples(source) == ROWS


def test_bad_rows_are_named_by_file_and_row_or_skipped(tmp_path):
    rows = [*ROWS, {**ROWS[0], "id": "d", "answer": ""}, {**ROWS[0], "id": "e", "language": "xx"}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "train.parquet"))
    data = {"train": str(tmp_path / "train.parquet")}
    checks = dict(non_empty=("answer",), language_field="language", languages=("bn", "sw"))
    source = hf_source.hf_data_source(data, SIGNATURE, **checks)
    with pytest.raises(sources.MalformedLineError) as info:
        source.get_dataset("train")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'train.parquet'}:4: field 'answer': empty value")
    assert "Fix this row" in message and "--gin.malformed_lines.skip=True" in message
    skipping = hf_source.hf_data_source(data, SIGNATURE, skip_malformed=True, **checks)
    assert [e["id"] for e in _examples(skipping)] == ["a", "b", "c"]


def test_missing_field_is_a_missing_field_not_a_null(tmp_path):
    rows = [ROWS[0], {k: v for k, v in ROWS[1].items() if k != "answer"}]
    data = {"train": _jsonl(tmp_path / "train.jsonl", rows)}
    source = hf_source.hf_data_source(data, SIGNATURE, required=("answer",))
    with pytest.raises(
        sources.MalformedLineError, match=r"train\.jsonl:2: field 'answer': missing"
    ):
        source.get_dataset("train")


def test_unparsable_json_lines_are_named_like_the_jsonl_reader_does(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{oops\n" + json.dumps(ROWS[1]) + "\n", "utf-8")
    source = hf_source.hf_data_source({"train": str(path)}, SIGNATURE)
    with pytest.raises(sources.MalformedLineError, match=r"train\.jsonl:2: bad JSON"):
        source.get_dataset("train")
    skipping = hf_source.hf_data_source({"train": str(path)}, SIGNATURE, skip_malformed=True)
    assert [e["id"] for e in _examples(skipping)] == ["a", "b"]


def test_user_mistakes_are_usage_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such data file"):
        hf_source.hf_data_source({"train": str(tmp_path / "x.parquet")}, SIGNATURE).get_dataset(
            "train"
        )
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(hf_source.UsageError, match="unknown file type"):
        hf_source.hf_data_source({"train": str(tmp_path / "x.csv")}, SIGNATURE).get_dataset("train")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(
        str(tmp_path / "saved")
    )
    source = hf_source.hf_data_source(str(tmp_path / "saved"), SIGNATURE, splits=("test",))
    with pytest.raises(hf_source.UsageError, match=r"no split 'test'; it has \['train'\]"):
        source.get_dataset("test")
