"""The demo sweep's β step: β's rationales for every split into RATIONALE_STORE, and β's quality.

    python -m fiat_tasks.demo_rationales --gin_file=gin/fiat/demo.gin \\
        --gin.MODEL_DIR="'D'" --gin.RATIONALE_STORE="'D/store'"

runs the one rationale generation job every dataset uses (`fiat_t5x.rationales.job`, what
`fiat-t5x rationales generate` runs: checks first, crash-safe, resumable, one record per
example with provenance, job.json) with gin's `BETA` (by default the demo's scripted reasoner,
`fiat_tasks.demo_beta.ScriptedDemoBeta`) and Iβ (`IBETA_FILE`), over RATIONALE_SPLITS, into
the store at `RATIONALE_STORE`, the plain path every later step reads. Then it appends to
`D/metrics.jsonl` what the job produced per split and, per split and language, how often β's
final answer ("..., so the answer is yes.") is the gold one, so the sweep records β's quality
next to the variants. The demo can do that last part because it knows every gold answer.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import gin
from fiat_t5x.data.cot import extract_answer
from fiat_t5x.rationales.store import RationaleStore
from fiat_tasks import demo

USAGE = (
    "usage: python -m fiat_tasks.demo_rationales --gin_file=gin/fiat/demo.gin "
    "--gin.MODEL_DIR=\"'DIR'\" [--gin.RATIONALE_STORE=\"'STORE'\"]\n"
)


def beta_quality(store_dir: str, splits: Sequence[str]) -> dict[str, float]:
    """Per split (and language) the share (×100) of examples whose stored rationale ends in
    the gold answer (a missing or unparsable answer counts as wrong)."""
    store = RationaleStore.open_readonly(store_dir)
    metrics: dict[str, float] = {}
    for split in splits:
        texts = store.texts(demo.BASE_TASK, split)
        hits: dict[str, list[bool]] = {}
        for example in demo.generate_split(split):
            correct = example.id in texts and extract_answer(texts[example.id]) == example.answer
            hits.setdefault("", []).append(correct)
            hits.setdefault(f"/{example.language}", []).append(correct)
        for suffix, values in sorted(hits.items()):
            metrics[f"{split}/answer_accuracy{suffix}"] = 100.0 * sum(values) / len(values)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    from fiat_t5x.inference.scoring import write_metrics
    from fiat_t5x.rationales import cli as rationales_cli
    from fiat_t5x.rationales import job as job_lib
    from fiat_t5x.training import gin_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    gin_cli.configure_logging()

    def body() -> None:
        job = gin_cli.configured(job_lib.RationaleJob)()
        summaries = job_lib.run_job(job, gin_config=gin.operative_config_str())
        model_dir = gin.query_parameter("%MODEL_DIR")
        counts = job_lib.write_job_metrics(model_dir, summaries)
        quality = beta_quality(job.store_dir, job.splits)
        write_metrics(model_dir, "beta", quality, writer="demo_beta_quality")
        for name, value in sorted({**counts, **quality}.items()):
            logging.info("beta/%s = %.1f", name, value)
        failed = sum(s.failed_permanent + s.failed_transient for s in summaries)
        if failed:  # the stored failures are retried by running the step again
            sys.exit(f"fiat_tasks.demo_rationales: β failed on {failed} examples (see above)")

    # The job's gin file (RationaleJob <- the dataset macros) first, as `rationales generate`.
    return gin_cli.run_main(
        rationales_cli.gin_argv(argv, []), body, ("MODEL_DIR", "RATIONALE_STORE"), USAGE
    )


if __name__ == "__main__":
    sys.exit(main())
