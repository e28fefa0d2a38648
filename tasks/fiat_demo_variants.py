"""FIAT's tasks on the bundled demo: β's rationales from the demo's scripted reasoner, injected.

Registers (see `fiat_t5x.rationales.injection`):
  fiat_demo_fiat, fiat_demo_wo_cot, fiat_demo_wo_instruction, fiat_demo_distilled_cot
with Iτ from `gin/fiat/itau/fiat_demo.yaml` and the metrics of `fiat_demo_plain`
(accuracy overall and per language). Iβ is `gin/fiat/ibeta/fiat_demo.yaml`.

β for the demo is `demo_beta`: a function of the rendered Iβ prompt that reads the last
"Q:" line and answers with `fiat_tasks.demo.oracle_rationale` (a scripted reasoner that is
wrong on a fixed 10% of questions), wrapped in `FunctionProvider` whose identity says
`kind: function`. Its rationales go through the normal generation job into a normal store;
`ensure_demo_rationales` fills the store on first use, so the demo needs no server.

The store is `rationale_store.directory` (gin) or $FIAT_RATIONALE_STORE when set, else
`~/.cache/fiat_t5x/demo_rationales/<Iβ hash>` (a changed Iβ gets a new store).
`gin/fiat/demo.gin` binds it to `store_beside(MODEL_DIR)`: the `beta_rationales/store` directory
beside the run, which in the demo sweep is the store the `beta_rationales` step fills
(`fiat_tasks.demo_rationales`), so everything a sweep makes stays under its root.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re

from fiat_t5x import gin_files
from fiat_t5x.rationales.generate import Example, generate_rationales, identity_for
from fiat_t5x.rationales.injection import (
    STORE_ENV,
    FiatTasks,
    rationale_store,
    register_fiat_variants,
)
from fiat_t5x.rationales.prompts import PromptSpec, load_prompt
from fiat_t5x.rationales.providers.function import FunctionProvider
from fiat_t5x.rationales.store import RationaleStore
from fiat_tasks import demo

logger = logging.getLogger(__name__)

GIN_FIAT_DIR = gin_files.gin_dir() / "fiat"  # the checkout's or the installed package's
IBETA_FILE = GIN_FIAT_DIR / "ibeta" / "fiat_demo.yaml"
ITAU_FILE = GIN_FIAT_DIR / "itau" / "fiat_demo.yaml"
_QUESTION = re.compile(r"^Q: (.*)$", re.MULTILINE)


def demo_beta(prompt: str) -> str:
    """The demo's β: the oracle's English chain of thought for the prompt's last "Q:" line.

    Ends with "..., so the answer is yes." (or "no") like a CoT model prompted with the demo's
    Iβ; the verdict is the oracle's own (sometimes wrong) one.
    """
    questions = _QUESTION.findall(prompt)
    if not questions:
        raise ValueError("the prompt has no 'Q:' line; render it with the demo's Iβ")
    return demo.oracle_rationale(questions[-1])


def demo_prompt() -> PromptSpec:
    return load_prompt(IBETA_FILE, demo.BASE_TASK)


def demo_provider() -> FunctionProvider:
    return FunctionProvider(demo_beta, name="fiat_demo oracle (scripted, not a language model)")


RATIONALES_VARIANT = "beta_rationales"


def store_beside(model_dir: str) -> str:
    """`<parent of model_dir>/beta_rationales/store`: the sweep's β store for a demo run."""
    parent = os.path.dirname(os.path.abspath(model_dir))
    return os.path.join(parent, RATIONALES_VARIANT, "store")


def default_store_dir() -> str:
    """The demo's store: gin / $FIAT_RATIONALE_STORE when set, else a cache dir per Iβ."""
    try:
        return rationale_store()
    except ValueError:
        pass
    cache = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache"))
    return str(cache / "fiat_t5x" / "demo_rationales" / demo_prompt().sha256[:12])


def ensure_demo_rationales(
    store_dir: str | None = None,
    splits: tuple[str, ...] = tuple(demo.SPLIT_SIZES),
    progress: bool = False,
) -> str:
    """Generates the demo β's rationales for `splits` into the store (only missing ones)."""
    store_dir = store_dir or default_store_dir()
    identity = identity_for(demo_provider(), demo_prompt())
    if (pathlib.Path(store_dir) / "identity.json").exists():
        existing = RationaleStore.open_readonly(store_dir)
        if existing.identity.sha256 == identity.sha256 and all(
            len(existing.texts(demo.BASE_TASK, s)) == demo.SPLIT_SIZES[s] for s in splits
        ):
            return store_dir
    prompt, provider = demo_prompt(), demo_provider()
    with RationaleStore.open_for_writing(store_dir, identity) as store:
        for split in splits:
            examples = [Example(e.id, e.to_dict()) for e in demo.generate_split(split)]
            summary = generate_rationales(
                examples,
                task=demo.BASE_TASK,
                split=split,
                prompt=prompt,
                provider=provider,
                store=store,
                progress=progress,
            )
            logger.info("demo rationales: %s", summary.describe())
    return store_dir


def register() -> FiatTasks:
    """Registers the demo's FIAT variants (idempotent)."""
    return register_fiat_variants(
        demo.BASE_TASK,
        ITAU_FILE,
        store_dir=ensure_demo_rationales,
        metrics_from=demo.PLAIN_TASK,
    )


TASKS = register()

if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO)
    path = ensure_demo_rationales(
        sys.argv[1] if len(sys.argv) > 1 else os.environ.get(STORE_ENV), progress=True
    )
    print(path)
