"""FIAT's tasks for XOR-AttriQA and XTREME-UP cross-lingual QA (the paper's two datasets).

Registers, for the pooled tasks `xor_attriqa_all`, `xtreme_up_qa_indic_all` and
`xtreme_up_qa_full_all` (their metrics give the paper's scores and per-language breakdowns):
  <task>_fiat, <task>_wo_cot, <task>_wo_instruction, <task>_distilled_cot
and, for the classification task xor_attriqa_all (labels in RANK_LABELS), the rank tasks
`<task>_<v>_rank` and evaluation mixtures `<task>_<v>_eval` (v in fiat, wo_cot,
wo_instruction) that report accuracy and AUC-PR from one evaluation (gin/fiat/xor_attriqa.gin).
with Iτ from `gin/fiat/itau/*.yaml` and rationales from the store named by
`rationale_store.directory` (gin RATIONALE_STORE, see gin/fiat/xor_attriqa.gin), keyed by the
base task's name. The data directories are read when a dataset is built, as for the base tasks.
"""

from __future__ import annotations

from fiat_t5x import gin_files
from fiat_t5x.data import metrics
from fiat_t5x.rationales.injection import FiatTasks, register_fiat_variants
from fiat_tasks import xor_attriqa, xtreme_up_qa  # noqa: F401 - registers the base tasks

ITAU_DIR = gin_files.gin_dir() / "fiat" / "itau"  # the checkout's or the installed package's
BASE_TASKS = {
    "xor_attriqa_all": ITAU_DIR / "xor_attriqa.yaml",
    "xtreme_up_qa_indic_all": ITAU_DIR / "xtreme_up_qa.yaml",
    "xtreme_up_qa_full_all": ITAU_DIR / "xtreme_up_qa.yaml",
}
# Candidate labels of the tasks scored by rank classification (AUC-PR).
RANK_LABELS = {"xor_attriqa_all": metrics.LABELS}


def register() -> dict[str, FiatTasks]:
    """(Re-)registers the FIAT variants of every base task in BASE_TASKS."""
    return {
        task: register_fiat_variants(task, itau, rank_labels=RANK_LABELS.get(task))
        for task, itau in BASE_TASKS.items()
    }


TASKS = register()
