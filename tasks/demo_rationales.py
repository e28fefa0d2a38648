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

import sys
from collections.abc import Sequence

import gin
from fiat_t5x.data.cot import extract_answer
from fiat_t5x.rationales.store import RationaleStore
from fiat_tasks import demo


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
    """`fiat-t5x rationales generate` (job, counts in MODEL_DIR/metrics.jsonl, exit codes),
    then β's accuracy from the store it filled."""
    from fiat_t5x.inference.scoring import write_metrics
    from fiat_t5x.rationales import cli as rationales_cli

    status = rationales_cli.generate_main(list(sys.argv[1:] if argv is None else argv))
    if status != 0:
        return status
    store_dir = gin.query_parameter("%RATIONALE_STORE")
    quality = beta_quality(store_dir, gin.query_parameter("%RATIONALE_SPLITS"))
    model_dir = rationales_cli.bound_model_dir()
    if model_dir:  # a sweep step: next to the job's counts
        write_metrics(model_dir, "beta", quality, writer="demo_beta_quality")
    for name, value in sorted(quality.items()):
        print(f"beta/{name} = {value:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
