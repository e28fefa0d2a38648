"""The Flan CoT collection on the real Flan CoT files (`../shared/data/flan_cot/`).

Most checks run on the plain-Python renderer (`RegisteredVariant.render`), which makes exactly
the choices of the tf.data graph, over thousands of real rows; one SeqIO-level test per
behaviour shows the graph produces the same text. Shares are checked against the documented
distributions within 4.5 binomial standard errors (fixed seeds: deterministic).
"""

import contextlib
import hashlib
import io
import json
import math
import re
from collections import Counter, defaultdict

import numpy as np
import pytest
import seqio
import tensorflow as tf

from fiat_t5x.data import cot, mixture_rates, mixtures
from fiat_t5x.data.few_shot import FLAN_DELIMITERS, MIXED_SEPARATORS, PREFIXES
from fiat_t5x.data.flan_render import format_dataset
from fiat_t5x.data.flan_variants import (
    COT_VARIANTS,
    DIRECT_VARIANTS,
    INVERTED_VARIANTS,
    load_split_rows,
    registered_variant,
)
from fiat_t5x.data.inversion import flatten_inversions
from fiat_t5x.data.options import COUNTERS, ENDINGS, HEADERS, PLACEMENTS
from fiat_t5x.data.sources import MalformedLineError
from fiat_tasks import flan_cot

PREFIX = "tcot"
ROWS = 600  # train rows rendered per dataset and variant in the Python-path tests
INPUTS_LENGTH = 1024
SIGMAS = 4.5
MULTIPLE_CHOICE = ("aqua", "creak", "ecqa", "qasc", "sensemaking")


@pytest.fixture(scope="module")
def data_dir(shared_dir):
    return shared_dir / "data" / "flan_cot"


@pytest.fixture(scope="module")
def registration(data_dir):
    """Every variant (the direct-answer ones too), ByteVocabulary."""
    return flan_cot.register_flan_cot(
        data_dir, prefix=PREFIX, direct_answer_share=0.2, overwrite=True
    )


@pytest.fixture(scope="module")
def train_rows(registration):
    return {d: load_split_rows(spec, "train") for d, spec in registration.specs.items()}


@pytest.fixture(scope="module")
def rendered(registration, train_rows):
    """(dataset, variant) -> [(row, Rendered)] for the first train rows, seeds (7, i).

    ROWS rows for the CoT and inverted variants (the statistics), fewer for the optional
    direct-answer ones (checked for their choices only).
    """
    out = {}
    for dataset, names in registration.tasks.items():
        for variant, name in names.items():
            rows = train_rows[dataset][: ROWS if variant not in DIRECT_VARIANTS else ROWS // 3]
            seeds = np.stack([np.full(len(rows), 7), np.arange(len(rows))], axis=1)
            results = registered_variant(name).render(rows, seeds, INPUTS_LENGTH)
            out[dataset, variant] = list(zip(rows, results, strict=True))
    return out


def kept(rendered, variants, datasets=tuple(flan_cot.DATASETS)):
    return [
        (d, v, row, r)
        for (d, v), pairs in rendered.items()
        if v in variants and d in datasets
        for row, r in pairs
        if not r.dropped
    ]


def assert_share(count: int, total: int, p: float, what: str) -> None:
    sigma = math.sqrt(total * p * (1 - p))
    assert abs(count - total * p) <= SIGMAS * sigma + 1e-9, (what, count, total * p, sigma)


def test_parsing_of_real_lines(data_dir):
    aqua = flan_cot.load_cot_dataset(data_dir, "aqua")[0]
    assert aqua["id"] == "aqua-1"
    assert aqua["stem"].endswith("if their ratio is 1/7:1/7:1/14?")
    assert (
        aqua["question"]
        == aqua["stem"] + "\nOptions:\n(A) 300\n(B) 992\n(C) 1120\n(D) 552\n(E) 312"
    )
    assert aqua["options"] == ["300", "992", "1120", "552", "312"]
    assert aqua["answer"] == "1120"  # "(C)" resolved to the third option
    creak = flan_cot.load_cot_dataset(data_dir, "creak")
    assert creak[0]["options"] == ["yes", "no"] and "Options" not in creak[0]["stem"]
    assert creak[3]["question"].startswith("Yes / no, is the following") and creak[3][
        "options"
    ] == ["yes", "no"]
    sense = flan_cot.load_cot_dataset(data_dir, "sensemaking")[0]
    assert (
        sense["question"].startswith("Of the following two sentences")
        and "Sentence A:" in (sense["question"])
    )
    gsm8k = flan_cot.load_cot_dataset(data_dir, "gsm8k")
    assert gsm8k[0]["options"] == [] and gsm8k[0]["answer"] == "72"
    assert len(gsm8k) == 7473


def test_registered_names_and_shape(registration, data_dir):
    assert set(registration.tasks) == set(flan_cot.DATASETS)
    every = COT_VARIANTS + INVERTED_VARIANTS + DIRECT_VARIANTS
    for dataset, names in registration.tasks.items():
        assert names == {v: f"{PREFIX}_{dataset}_{v}" for v in every}
        assert len(registration.specs[dataset].cot_templates) == 10
    assert registration.mixtures == (f"{PREFIX}_zs", f"{PREFIX}_fs", f"{PREFIX}_direct", PREFIX)
    default = flan_cot.register_flan_cot(
        data_dir, prefix="tcotdef", datasets=("qasc",), overwrite=True
    )
    assert set(default.tasks["qasc"]) == set(COT_VARIANTS + INVERTED_VARIANTS)
    assert default.mixtures == ("tcotdef_zs", "tcotdef_fs", "tcotdef")


def test_no_rendered_prompt_doubles_a_prefix(registration, rendered):
    """Few-shot labels are never stacked on templates that label their own parts (and an
    example is never its own exemplar)."""
    few_shot = [v for v in registration.tasks["aqua"] if "fs" in v]
    doubled = re.compile(r"(?m)^([A-Za-z\[\]#*]{1,14}:) *\1")  # "Q: Q: ...", "A: A: ..."
    checked = 0
    for dataset, variant, row, r in kept(rendered, few_shot):
        formatting = registered_variant(f"{PREFIX}_{dataset}_{variant}").formatting
        assert not doubled.search(r.inputs), (dataset, variant, r.inputs)
        assert row["id"] not in r.exemplar_ids  # never its own exemplar
        if PREFIXES[r.choices["prefixes"]].labelled:
            assert formatting.prefixes_allowed[r.choices["template_index"]]
        checked += 1
    assert checked > 10_000
    # The old bug, for the record: a "Q:" template under a "Q: "/"A: " few-shot format.
    labelled = [
        i
        for i, ok in enumerate(
            registered_variant(f"{PREFIX}_aqua_cot_fs").formatting.prefixes_allowed
        )
        if not ok
    ]
    assert labelled  # e.g. "Q: {question}\n{options}\nA: Let's do the calculation."


def test_multiple_choice_questions_keep_their_choices_in_every_variant(registration, rendered):
    every = tuple(registration.tasks["aqua"])
    checked = Counter()
    for dataset, variant, row, r in kept(rendered, every, MULTIPLE_CHOICE):
        if row["stem"] == row["question"]:
            continue  # no list in the question (creak's yes/no questions): nothing to keep
        text = r.inputs + "\n" + r.targets
        assert all(option in text for option in row["options"]), (dataset, variant, text)
        if variant.startswith("inverted"):
            template = flatten_inversions(registration.specs[dataset].inversions)[
                r.choices["template_index"]
            ][1]
            if "{question}" in template.targets:
                assert row["question"] in r.targets  # the inverted target keeps the choices
        checked[variant] += 1
    assert set(checked) == set(every) and min(checked.values()) > 150


def test_few_shot_shares_match_flans_distributions(registration, rendered):
    same = kept(rendered, ("cot_fs",))
    mixed = kept(rendered, ("cot_fs_mix",))
    all_same = [r for (d, v), pairs in rendered.items() if v == "cot_fs" for _, r in pairs]
    total_weight = sum(d.weight for d in FLAN_DELIMITERS)
    delimiters = Counter(r.choices["delimiters"] for _, _, _, r in same)
    for index, entry in enumerate(FLAN_DELIMITERS):
        assert_share(delimiters[index], len(same), entry.weight / total_weight, entry)
    for _, _, _, r in same:  # the drawn separator is the one in the prompt
        if r.num_exemplars:
            assert FLAN_DELIMITERS[r.choices["delimiters"]].example_separator in r.inputs
    separators = Counter(r.choices["separator"] for _, _, _, r in mixed)
    for index, separator in enumerate(MIXED_SEPARATORS):
        assert_share(separators[index], len(mixed), 1 / len(MIXED_SEPARATORS), separator)
    # Prefix pairs: FLAN's weights for templates without labels of their own, none otherwise.
    allowed = {
        d: registered_variant(f"{PREFIX}_{d}_cot_fs").formatting.prefixes_allowed
        for d in flan_cot.DATASETS
    }
    unlabelled_share = PREFIXES[0].weight / sum(p.weight for p in PREFIXES)
    free = [r for d, _, _, r in same if allowed[d][r.choices["template_index"]]]
    assert sum(r.choices["prefixes"] == 0 for r in free) and len(free) > 2000
    assert_share(sum(r.choices["prefixes"] == 0 for r in free), len(free), unlabelled_share, "")
    assert all(
        r.choices["prefixes"] == 0
        for d, _, _, r in same
        if not allowed[d][r.choices["template_index"]]
    )
    # Shots: the same-template kind keeps the matches among 25 candidates, Binomial(25, 1/10).
    shots = Counter(min(r.choices["num_shots"], 5) for r in all_same)
    for k in range(5):
        assert_share(shots[k], len(all_same), math.comb(25, k) * 0.1**k * 0.9 ** (25 - k), k)
    assert sum(r.dropped for r in all_same) >= shots[0]  # no match: dropped, like FLAN
    assert all(r.choices["num_shots"] == 5 for _, _, _, r in mixed)
    assert all(1 <= r.num_exemplars <= 5 for _, _, _, r in mixed)


def test_option_format_and_answer_sentence_shares(registration, rendered):
    shown = [
        (d, row, r)
        for d, v, row, r in kept(rendered, COT_VARIANTS)
        if r.choices["options_format"] >= 0
    ]
    space = registration.specs["aqua"].options_space
    formats = [space.format(r.choices["options_format"]) for _, _, r in shown]
    n = len(formats)
    assert n > 5000
    headers = Counter(f.header for f in formats)
    for header in HEADERS:
        assert_share(headers[header], n, 1 / len(HEADERS), header)
    endings = Counter(f.ending for f in formats)
    for ending in ENDINGS:
        assert_share(endings[ending], n, 1 / len(ENDINGS), ending)
    placements = Counter(
        next(p for p in reversed(PLACEMENTS) if f.marker.prefixes[0].startswith(p)) for f in formats
    )
    for placement in PLACEMENTS:
        assert_share(placements[placement], n, 1 / len(PLACEMENTS), placement)
    distinct = sum(f.marker.distinct for f in formats)
    counters = len(COUNTERS) * 7 * len(PLACEMENTS)
    assert_share(distinct, n, counters / len(space.markers), "labelled markers")
    for (_, row, r), fmt in zip(shown, formats, strict=True):
        assert fmt.render(row["options"]) in r.inputs
    sentences = Counter()
    joiners = Counter()
    targets = kept(rendered, COT_VARIANTS)
    for _, _, _, r in targets:
        joiner, sentence = cot.ANSWER_FORMS[r.choices["answer_form"]]
        sentences[sentence] += 1
        joiners[joiner] += 1
    for sentence in cot.ANSWER_SENTENCES:
        assert_share(sentences[sentence], len(targets), 1 / len(cot.ANSWER_SENTENCES), sentence)
    assert_share(joiners["\n"], len(targets), 0.5, "newline before the answer")


def test_the_extractor_reads_every_rendered_cot_target(registration, rendered):
    space = registration.specs["aqua"].options_space
    for _, _, row, r in kept(rendered, COT_VARIANTS):
        answer = row["answer"]
        if r.choices["options_format"] >= 0:
            answer = space.format(r.choices["options_format"]).target_for(answer, row["options"])
        assert r.targets.endswith(cot.answer_sentence(r.choices["answer_form"], answer))
        assert cot.postprocess_cot(r.targets) == cot.normalize_answer(answer)


def _graph_seeds(seed: int, count: int) -> np.ndarray:
    """The per-example seeds SeqIO gives the first seeded map of a pipeline (checked below)."""
    pairs = tf.data.Dataset.zip(
        (tf.data.Dataset.random(seed=seed), tf.data.Dataset.random(seed=seed + 1))
    )
    return np.array(list(pairs.take(count).as_numpy_iterator()), np.int64)


def test_examples_without_a_fitting_exemplar_are_dropped_and_counted(registration, train_rows):
    name = f"{PREFIX}_gsm8k_cot_fs"
    variant = registered_variant(name)
    rows = load_split_rows(variant.spec, "validation")
    seeds = _graph_seeds(11, len(rows))
    lengths = {"inputs": 900, "targets": 256}
    python = variant.render(rows, seeds, lengths["inputs"])
    dropped = [row["id"] for row, r in zip(rows, python, strict=True) if r.dropped]
    assert 0 < len(dropped) < len(rows)
    task = seqio.get_mixture_or_task(name)
    graph = list(
        task.get_dataset(lengths, split="validation", shuffle=False, seed=11).as_numpy_iterator()
    )
    by_id = {row["id"]: (i, r) for i, (row, r) in enumerate(zip(rows, python, strict=True))}
    assert [ex["id"].decode() for ex in graph] == [
        row["id"] for row, r in zip(rows, python, strict=True) if not r.dropped
    ]
    for ex in graph:
        i, r = by_id[ex["id"].decode()]
        assert ex["format_seed"].tolist() == seeds[i].tolist()
        assert ex["inputs_pretokenized"].decode() == r.inputs and ex["num_exemplars"] >= 1
        assert len(ex["inputs"]) <= lengths["inputs"]  # fits: never truncated
    # Counted: `fiat-t5x mixture-rates --inputs-length` reports the train split's drops.
    out = io.StringIO()
    mixtures.register_rates_mixture("tcot_drops", {name: 1.0}, overwrite=True)
    with contextlib.redirect_stdout(out):
        code = mixture_rates.main(
            ["tcot_drops", "--json", "--inputs-length", "300", "--module", "fiat_tasks.flan_cot"]
        )
    assert code == 0
    count = json.loads(out.getvalue())["few_shot_drops"][name]
    assert count["total"] == len(train_rows["gsm8k"]) and count["dropped"] > 0.9 * count["total"]


# One SeqIO pipeline per behaviour: lettered options (aqua) in each CoT kind, an inversion, the
# no-options and few-shot direct forms, options made of whole sentences (sensemaking).
GRAPH_CASES = [
    ("aqua", "cot_zs"),
    ("aqua", "cot_fs"),
    ("aqua", "cot_fs_mix"),
    ("aqua", "inverted_fs_mix"),
    ("aqua", "zsnoopt"),
    ("aqua", "fsopt"),
    ("sensemaking", "cot_zs"),
]


def test_graph_renders_like_python(registration, train_rows):
    lengths = {"inputs": INPUTS_LENGTH, "targets": 512}
    for dataset, variant in GRAPH_CASES:
        rows = {row["id"]: row for row in train_rows[dataset]}
        name = registration.tasks[dataset][variant]
        ds = seqio.get_mixture_or_task(name).get_dataset(
            lengths, split="train", shuffle=False, seed=5
        )
        for ex in ds.take(2).as_numpy_iterator():
            r = registered_variant(name).render(
                [rows[ex["id"].decode()]], ex["format_seed"][None], lengths["inputs"]
            )[0]
            assert ex["inputs_pretokenized"].decode() == r.inputs, name
            assert ex["targets_pretokenized"].decode() == r.targets, name
            for key, value in r.choices.items():
                assert int(ex[key]) == value, (name, key)
            assert int(ex["num_exemplars"]) == r.num_exemplars
            used = [i.decode() for i in ex["exemplar_ids"] if i] if "exemplar_ids" in ex else []
            assert tuple(used) == r.exemplar_ids and ex["id"].decode() not in used


def test_formatting_is_after_the_cache_point_and_seeded(registration):
    task = seqio.get_mixture_or_task(f"{PREFIX}_creak_cot_zs")
    kinds = [
        type(p).__name__ if not hasattr(p, "func") else p.func.__name__ for p in task.preprocessors
    ]
    assert kinds.index("CacheDatasetPlaceholder") < kinds.index(format_dataset.__name__)
    assert task.supports_caching

    def choices(seed):
        ds = task.get_dataset(None, split="train", shuffle=False, seed=seed)
        return [
            (ex["template_index"], ex["options_format"], ex["answer_form"])
            for ex in ds.take(20).as_numpy_iterator()
        ]

    assert choices(11) == choices(11)
    assert choices(11) != choices(12)


def test_each_epoch_redraws_the_prompts_reproducibly(registration):
    """SeqIO repeats before the post-cache steps and seeds each example from one stream, so the
    second epoch draws new prompts; the same seed repeats both epochs, whatever the shuffle."""
    task = seqio.get_mixture_or_task(f"{PREFIX}_qasc_cot_zs")

    def per_id(seed, shuffle):
        ds = task.get_dataset(None, split="train", shuffle=shuffle, seed=seed, num_epochs=2)
        seen = defaultdict(list)
        for ex in ds.as_numpy_iterator():
            seen[ex["id"]].append((int(ex["template_index"]), ex["inputs_pretokenized"]))
        return {example_id: sorted(both) for example_id, both in seen.items()}

    first = per_id(7, shuffle=False)
    assert all(len(both) == 2 for both in first.values())
    same_template = sum(a[0] == b[0] for a, b in first.values())
    assert_share(same_template, len(first), 1 / 10, "same template in both epochs")
    assert per_id(7, shuffle=True) == first


def test_malformed_lines_name_file_and_line_or_are_skipped(tmp_path):
    good = "What is 2+2?\t4\t2+2 is 4."
    (tmp_path / "gsm8k_train.tsv").write_text(
        "\n".join([good, "only\ttwo", "Q?\t \tR.", good]) + "\n"
    )
    with pytest.raises(MalformedLineError, match=r"gsm8k_train.tsv:2: wrong column count"):
        flan_cot.load_cot_dataset(tmp_path, "gsm8k")
    (tmp_path / "aqua_train.tsv").write_text("Pick\\nOptions:\\n(A) 1\\n(B) 2\t(D)\tWhy.\n")
    with pytest.raises(MalformedLineError, match=r"aqua_train.tsv:1: .*names no listed option"):
        flan_cot.load_cot_dataset(tmp_path, "aqua")
    reg = flan_cot.register_flan_cot(
        tmp_path, prefix="tbad", datasets=("gsm8k",), skip_malformed=True, overwrite=True
    )
    assert reg.report.num_skipped == 2 and reg.report.kept == 2
    assert [line for _, line, _ in reg.report.skipped] == [2, 3]
    assert "empty value" in reg.report.skipped[1][2]


def _train_count(data_dir, dataset: str) -> int:
    """Lines of the TSV minus the validation lines (5% by SHA-256 of "<dataset>-<line>")."""
    lines = (data_dir / f"{dataset}_train.tsv").read_text(encoding="utf-8").count("\n")
    held_out = sum(
        int.from_bytes(hashlib.sha256(f"{dataset}-{i}".encode()).digest()[:8], "big") % 1_000_000
        < 50_000
        for i in range(1, lines + 1)
    )
    return lines - held_out


def test_mixture_rates_of_flan_cot_equal_a_recomputation_from_line_counts(data_dir):
    flan_cot.register_flan_cot(data_dir, overwrite=True)  # the default shape and names
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert mixture_rates.main(["flan_cot", "--json", "--module", "fiat_tasks.flan_cot"]) == 0
    printed = json.loads(out.getvalue())
    counts = {d: min(_train_count(data_dir, d), 100_000) for d in flan_cot.DATASETS}
    total = sum(counts.values())
    expected = {}
    for d, n in counts.items():
        base = n / total / 1.3  # originals 1, inverted 0.3, in each half
        expected[f"flan_cot_{d}_cot_zs"] = 0.5 * base
        expected[f"flan_cot_{d}_inverted"] = 0.5 * 0.3 * base
        for kind in ("cot_fs", "cot_fs_mix"):
            expected[f"flan_cot_{d}_{kind}"] = 0.5 * 0.5 * base
        for kind in ("inverted_fs", "inverted_fs_mix"):
            expected[f"flan_cot_{d}_{kind}"] = 0.5 * 0.5 * 0.3 * base
    assert printed == pytest.approx(expected, rel=1e-9)


def test_sampled_frequencies_match_printed_rates(registration):
    counts = {
        f"{PREFIX}_{d}": registration.train_counts[f"{PREFIX}_{d}"] for d in ("qasc", "strategyqa")
    }
    mixtures.register_collection_mixture(
        "tcot_stat_direct",
        counts,
        prompt_settings={"zsopt": 1, "zsnoopt": 3},
        cap=1500,
        inverted_rate=None,
        overwrite=True,
    )
    mixtures.register_collection_mixture(
        "tcot_stat_cot", counts, prompt_settings={"cot_zs": 1}, overwrite=True
    )
    mixtures.register_weighted_mixture(
        "tcot_stat", {"tcot_stat_direct": 0.7, "tcot_stat_cot": 0.3}, overwrite=True
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert mixture_rates.main(["tcot_stat", "--json", "--module", "fiat_tasks.flan_cot"]) == 0
    printed = json.loads(out.getvalue())
    assert len(printed) == 8 and math.isclose(sum(printed.values()), 1.0)
    draws = 2000
    ds = seqio.get_mixture_or_task("tcot_stat").get_dataset(
        None, split="train", seed=3, passthrough_features=["task"]
    )
    seen = Counter(ex["task"].decode() for ex in ds.take(draws).as_numpy_iterator())
    for task, share in printed.items():
        assert_share(seen[task], draws, share, task)
