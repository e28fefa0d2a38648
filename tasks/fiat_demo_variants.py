"""FIAT's tasks on the bundled demo: β's stored rationales injected into τ's inputs.

Registers (see `fiat_t5x.rationales.injection`):
  fiat_demo_fiat, fiat_demo_wo_cot, fiat_demo_wo_instruction, fiat_demo_distilled_cot
with Iτ from `gin/fiat/itau/fiat_demo.yaml`, the demo's SentencePiece vocabulary
(`fiat_tasks.demo_vocab`) and the metrics of `fiat_demo_plain` (accuracy overall and per
language). Iβ is `gin/fiat/ibeta/fiat_demo.yaml`.

Registering reads nothing and runs nothing: the rationales are joined by id from the store
when a dataset is built, and the store is a plain path, `rationale_store()` (gin
`RATIONALE_STORE`, or $FIAT_RATIONALE_STORE). β writes it in a step of its own: the demo
sweep's `beta_rationales` (`python -m fiat_tasks.demo_rationales`), with the β bound to gin's
`BETA` (by default the scripted `fiat_tasks.demo_beta.ScriptedDemoBeta`).
"""

from __future__ import annotations

from fiat_t5x import gin_files
from fiat_t5x.rationales.injection import FiatTasks, register_fiat_variants
from fiat_t5x.rationales.prompts import PromptSpec, load_prompt
from fiat_tasks import demo, demo_vocab

GIN_FIAT_DIR = gin_files.gin_dir() / "fiat"  # the checkout's or the installed package's
IBETA_FILE = GIN_FIAT_DIR / "ibeta" / "fiat_demo.yaml"
ITAU_FILE = GIN_FIAT_DIR / "itau" / "fiat_demo.yaml"


def demo_prompt() -> PromptSpec:
    """The demo's Iβ (what a β, scripted or real, is prompted with)."""
    return load_prompt(IBETA_FILE, demo.BASE_TASK)


def register() -> FiatTasks:
    """Registers the demo's FIAT variants (idempotent)."""
    return register_fiat_variants(
        demo.BASE_TASK,
        ITAU_FILE,
        metrics_from=demo.PLAIN_TASK,
        vocabulary=demo_vocab.vocabulary(),
    )


TASKS = register()
