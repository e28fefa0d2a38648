"""The demo sweep's β step: β's rationales for every split into RATIONALE_STORE.

    python -m fiat_tasks.demo_rationales --gin_file=gin/fiat/demo.gin \\
        --gin.MODEL_DIR="'D'" --gin.RATIONALE_STORE="'D/store'"

runs the normal rationale generation job (`fiat_t5x.rationales.generate`: crash-safe,
resumable, one record per example with provenance) with gin's `BETA` (by default the demo's
scripted reasoner, `fiat_tasks.demo_beta.ScriptedDemoBeta`) and Iβ (`IBETA_FILE`), over the
train, validation and test splits, into the store at `RATIONALE_STORE`, the plain path every
later step reads. Then it appends to `D/metrics.jsonl`, per split and language, how many
rationales were stored and how often β's final answer ("..., so the answer is yes.") is the
gold one, so the sweep records β's quality next to the variants.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence

import gin
from fiat_t5x.data.cot import extract_answer
from fiat_t5x.rationales.generate import Example, generate_rationales, identity_for
from fiat_t5x.rationales.prompts import load_prompt
from fiat_t5x.rationales.providers.base import Provider
from fiat_t5x.rationales.store import RationaleStore
from fiat_tasks import demo

USAGE = (
    "usage: python -m fiat_tasks.demo_rationales --gin_file=gin/fiat/demo.gin "
    "--gin.MODEL_DIR=\"'DIR'\" [--gin.RATIONALE_STORE=\"'STORE'\"]\n"
)


def beta_quality(store_dir: str, splits: Sequence[str]) -> dict[str, float]:
    """Per split (and language): stored rationales, and the share (×100) whose final answer
    is the gold one (an unparsable answer counts as wrong)."""
    store = RationaleStore.open_readonly(store_dir)
    metrics: dict[str, float] = {}
    for split in splits:
        texts = store.texts(demo.BASE_TASK, split)
        hits: dict[str, list[bool]] = {}
        for example in demo.generate_split(split):
            correct = example.id in texts and extract_answer(texts[example.id]) == example.answer
            hits.setdefault("", []).append(correct)
            hits.setdefault(f"/{example.language}", []).append(correct)
        metrics[f"beta/{split}/rationales"] = float(len(texts))
        for suffix, values in sorted(hits.items()):
            metrics[f"beta/{split}/answer_accuracy{suffix}"] = 100.0 * sum(values) / len(values)
    return metrics


def generate_demo_rationales(
    store_dir: str,
    beta: Provider,
    ibeta_file: str,
    ibeta_task: str = demo.BASE_TASK,
    splits: Sequence[str] = tuple(demo.SPLIT_SIZES),
    progress: bool = True,
) -> dict[str, float]:
    """Fills `store_dir` with β's rationales for `splits` (only missing ones); β's quality."""
    prompt = load_prompt(ibeta_file, ibeta_task)
    with RationaleStore.open_for_writing(store_dir, identity_for(beta, prompt)) as store:
        for split in splits:
            examples = [Example(e.id, e.to_dict()) for e in demo.generate_split(split)]
            summary = generate_rationales(
                examples,
                task=demo.BASE_TASK,
                split=split,
                prompt=prompt,
                provider=beta,
                store=store,
                progress=progress,
            )
            logging.info("demo rationales: %s", summary.describe())
    return beta_quality(store_dir, splits)


def main(argv: Sequence[str] | None = None) -> int:
    from fiat_t5x.training import gin_cli
    from fiat_t5x.training.metrics_writer import MetricsWriter

    argv = list(sys.argv[1:] if argv is None else argv)
    gin_cli.configure_logging()

    def body() -> None:
        # `python -m` runs this file as __main__; gin configures the imported module's function.
        module = importlib.import_module("fiat_tasks.demo_rationales")
        metrics = gin_cli.configured(module.generate_demo_rationales)()
        writer = MetricsWriter(gin.query_parameter("%MODEL_DIR"), tensorboard=False)
        try:
            writer.write(0, metrics)
        finally:
            writer.close()
        for name, value in sorted(metrics.items()):
            logging.info("%s = %.1f", name, value)

    return gin_cli.run_main(argv, body, ("MODEL_DIR", "RATIONALE_STORE"), USAGE)


if __name__ == "__main__":
    sys.exit(main())
