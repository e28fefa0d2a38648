"""The generation job as gin configures it: β's rationales for a task's splits into RATIONALE_STORE.

`gin/runs/rationales.gin` binds `RationaleJob` to the macros the dataset gin files already
define for training and inference (RATIONALE_STORE, BASE_TASK, IBETA_FILE, IBETA_TASK, BETA),
so one gin file serves generation, training, evaluation and FIAT inference:

    fiat-t5x rationales generate --gin_file=gin/fiat/xor_attriqa.gin \\
        --gin.RATIONALE_STORE="'/data/rationales/xor'" --gin.BETA_BASE_URL=... --gin.BETA_MODEL=...

`run_job` checks everything it can before the store exists (modules, Iβ, every example's
prompt, β's settings and key), so a typo costs no store and no request; then it generates
every split (resumable: settled examples are skipped) and, given a MODEL_DIR (a sweep step),
writes what β produced per split to MODEL_DIR/metrics.jsonl.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import gin
from fiat_t5x import errors
from fiat_t5x.rationales.examples import read_examples
from fiat_t5x.rationales.generate import (
    Example,
    JobSummary,
    check_renders,
    generate_rationales,
    identity_for,
)
from fiat_t5x.rationales.prompt_files import resolve_path
from fiat_t5x.rationales.prompts import PromptSpec, load_prompt
from fiat_t5x.rationales.providers.base import Provider
from fiat_t5x.rationales.store import RationaleStore
from fiat_t5x.training.gin_cli import UsageError

logger = logging.getLogger(__name__)

DEFAULT_SPLITS = ("train", "validation", "test")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class RationaleJob:
    """What to generate (plain settings; `beta` is the gin-built provider).

    Attributes:
      store_dir: the store (gin RATIONALE_STORE).
      task: the store key's task, and the SeqIO task whose raw examples are read (BASE_TASK).
      ibeta_file / ibeta_task: Iβ (IBETA_FILE, IBETA_TASK; the task defaults to `task`).
      beta: the provider (BETA), e.g. `@openai_http.OpenAIProvider()`.
      splits: the splits to generate; FIAT needs every split it trains, evaluates and infers on.
      input_files: split -> JSONL file read instead of the SeqIO task for that split.
      id_field: the example id's field.
      import_modules: modules to import first (task registrations).
      limit: only the first N examples of each split.
      retry_failed: ask again for examples whose last outcome was a permanent failure.
      progress: a progress bar on stderr.
    """

    store_dir: str
    task: str
    ibeta_file: str
    beta: Provider
    splits: Sequence[str] = DEFAULT_SPLITS
    ibeta_task: str | None = None
    input_files: Mapping[str, str] = dataclasses.field(default_factory=dict)
    id_field: str = "id"
    import_modules: Sequence[str] = ()
    limit: int | None = None
    retry_failed: bool = False
    progress: bool = True

    def settings(self) -> dict[str, Any]:
        """The job as plain data for job.json (β described by itself, without secrets)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "beta"}
        out["splits"] = list(self.splits)
        out["input_files"] = dict(self.input_files)
        out["import_modules"] = list(self.import_modules)
        return out


def check_job(job: RationaleJob) -> None:
    """The job's own settings (not β's): unset values and unknown split files."""
    unset = [f.name for f in dataclasses.fields(job) if getattr(job, f.name) is gin.REQUIRED]
    if unset:
        raise UsageError(f"RationaleJob: {', '.join(unset)} not set (see gin/runs/rationales.gin)")
    if not job.splits or isinstance(job.splits, str):
        raise UsageError(f"RationaleJob.splits must be a list of split names, got {job.splits!r}")
    extra = sorted(set(job.input_files) - set(job.splits))
    if extra:
        raise UsageError(
            f"RationaleJob.input_files names splits {extra} that are not in splits "
            f"{list(job.splits)}"
        )
    if not isinstance(job.beta, Provider):
        raise UsageError(
            f"BETA must be a β provider (e.g. @openai_http.OpenAIProvider()), got {job.beta!r}"
        )


def load_job_inputs(job: RationaleJob) -> tuple[PromptSpec, dict[str, list[Example]]]:
    """Iβ and every split's examples, with every prompt rendered once (typos fail here)."""
    for name in job.import_modules:
        errors.import_module(name, "--module (RationaleJob.import_modules)")
    prompt = load_prompt(resolve_path(job.ibeta_file), job.ibeta_task or job.task)
    examples = {}
    for split in job.splits:
        try:
            examples[split] = read_examples(
                task=job.task,
                split=split,
                input_jsonl=job.input_files.get(split),
                id_field=job.id_field,
                limit=job.limit,
            )
        except (OSError, ValueError) as e:
            raise UsageError(str(e)) from None
        check_renders(prompt, examples[split], job.task, split)
    return prompt, examples


def run_job(job: RationaleJob, *, gin_config: str = "") -> list[JobSummary]:
    """Checks everything, then generates every split of `job` into its store.

    Raises UsageError (and its subclasses: store, prompt, provider and endpoint errors) for
    anything a user must fix; a store is created only once the checks passed.
    """
    check_job(job)
    prompt, examples = load_job_inputs(job)
    beta = job.beta
    beta.check()
    identity = identity_for(beta, prompt)
    logger.info(
        "β %s; store %s (identity %s)", beta.describe(), job.store_dir, identity.sha256[:12]
    )
    with beta, RationaleStore.open_for_writing(job.store_dir, identity) as store:
        store.write_job_config(
            {
                "job": job.settings(),
                "beta": beta.describe(),
                "identity_sha256": identity.sha256,
                "gin": beta.redact(gin_config),
            }
        )
        return [
            generate_rationales(
                examples[split],
                task=job.task,
                split=split,
                prompt=prompt,
                provider=beta,
                store=store,
                retry_failed=job.retry_failed,
                progress=job.progress,
            )
            for split in job.splits
        ]


def write_job_metrics(model_dir: str, summaries: Sequence[JobSummary]) -> dict[str, float]:
    """What β produced per split, appended to MODEL_DIR/metrics.jsonl (a sweep step's result)."""
    from fiat_t5x.inference.scoring import write_metrics

    metrics: dict[str, float] = {}
    for s in summaries:
        with_rationale = s.already_done + s.generated
        metrics[f"{s.split}/examples"] = s.total
        metrics[f"{s.split}/rationales"] = with_rationale
        metrics[f"{s.split}/missing"] = s.total - with_rationale
        metrics[f"{s.split}/prompt_tokens"] = s.prompt_tokens
        metrics[f"{s.split}/completion_tokens"] = s.completion_tokens
    write_metrics(model_dir, "beta", metrics)
    return metrics
