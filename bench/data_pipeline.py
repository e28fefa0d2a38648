"""Throughput of a templated few-shot Flan mixture through tokenization and packing.

Builds the seven Flan CoT datasets' few-shot variants (`cot_fs`: same template, ~2.5 shots;
`cot_fs_mix`: 5 shots with mixed templates; equal shares, examples-proportional with a cap),
samples the mixture, runs SeqIO's EncDecFeatureConverter
with packing (what T5X feeds the train step), and reports packed rows/s, examples/s and
non-padding tokens/s after a warm-up. Compare tokens/s with the train step's consumption
(batch x (inputs + targets length) / step time).

    .venv/bin/python bench/data_pipeline.py --data-dir ../shared/data/flan_cot
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--inputs-length", type=int, default=1024)
    parser.add_argument("--targets-length", type=int, default=256)
    parser.add_argument("--rows", type=int, default=1000, help="packed rows to time")
    parser.add_argument("--warmup", type=int, default=100, help="packed rows before timing")
    args = parser.parse_args()

    import seqio
    import tensorflow as tf

    from fiat_t5x.data import mixtures
    from fiat_tasks import flan_cot

    start = time.perf_counter()
    reg = flan_cot.register_flan_cot(args.data_dir, prefix="bench_cot", overwrite=True)
    counts = {spec.name: spec.source.num_input_examples("train") for spec in reg.specs.values()}
    mixtures.register_collection_mixture(
        "bench_fewshot",
        counts,
        prompt_settings={"cot_fs": 1.0, "cot_fs_mix": 1.0},
        cap=5000,
        inverted_rate=None,
        overwrite=True,
    )
    lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
    ds = seqio.get_mixture_or_task("bench_fewshot").get_dataset(lengths, split="train", seed=0)
    ds = seqio.EncDecFeatureConverter(pack=True)(ds, lengths).prefetch(tf.data.AUTOTUNE)
    built = time.perf_counter() - start

    it = ds.as_numpy_iterator()
    for _ in range(args.warmup):
        next(it)
    rows = examples = tokens = 0
    t0 = time.perf_counter()
    for _ in range(args.rows):
        row = next(it)
        rows += 1
        examples += int(row["encoder_segment_ids"].max())
        tokens += int(
            (row["encoder_input_tokens"] != 0).sum() + (row["decoder_target_tokens"] != 0).sum()
        )
    elapsed = time.perf_counter() - t0
    result = {
        "mixture": "bench_fewshot (7 Flan CoT datasets x {cot_fs, cot_fs_mix})",
        "vocabulary": "ByteVocabulary",
        "lengths": lengths,
        "pipeline_build_s": round(built, 1),
        "packed_rows_per_s": round(rows / elapsed, 1),
        "examples_per_s": round(examples / elapsed, 1),
        "tokens_per_s": round(tokens / elapsed),
        "examples_per_row": round(examples / rows, 2),
        "cpu_count": os.cpu_count(),
        "tf_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
