"""The demo's instruction-tuned base τ: train it and export it as a T5X checkpoint.

`python -m fiat_tasks.demo_base --gin_file=gin/fiat/demo_base.gin --gin.MODEL_DIR="'D'"`
fully fine-tunes the demo's tiny model (`gin/fiat/demo_model.gin`) on the generic instruction
mixture (`fiat_tasks.demo_instructions`) exactly like `python -m fiat_t5x.train` (same gin, same
checkpoints, same resume), then writes the trained weights as a T5X-style checkpoint
`D/base/checkpoint_<step>` (`fiat_t5x.models.checkpoints.save_t5x_params`), which is what
INITIAL_CHECKPOINT_PATH reads. Running it again on a finished MODEL_DIR only re-exports.

In the demo sweep (`gin/sweeps/demo.yaml`) this is the step `instruction_base`; the FIAT
variants read its export as a plain path, `INSTRUCTION_TUNED_CHECKPOINT_PATH` in
`gin/fiat/demo.gin` (the sweep binds it to `{root}/instruction_base/base`).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Sequence

import jax

import gin

EXPORT_SUBDIR = "base"

USAGE = (
    "usage: python -m fiat_tasks.demo_base --gin_file=gin/fiat/demo_base.gin "
    "--gin.MODEL_DIR=\"'DIR'\" [--gin.NAME=VALUE ...]\n"
)


def export_params(params, config, model_dir: str, step: int) -> str:
    """Writes `model_dir/base/checkpoint_<step>` (replacing an older export); returns it."""
    from fiat_t5x.models.checkpoints import save_t5x_params

    out = os.path.join(model_dir, EXPORT_SUBDIR)
    written = save_t5x_params(params, config, out, step=step, overwrite=True)
    logging.info("exported the instruction-tuned base to %s", written)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    from fiat_t5x.training import distributed, gin_cli
    from fiat_t5x.training.optimizers import merge_params

    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)
    train_module = importlib.import_module("fiat_t5x.train")

    def body() -> None:
        gin_cli.configured(distributed.initialize)()
        result = gin_cli.configured(train_module.train)()
        if jax.process_index() != 0:
            return
        params = jax.device_get(merge_params(result.state.params, result.frozen))
        step = int(jax.device_get(result.state.step))
        model_dir = gin.query_parameter("%MODEL_DIR")
        export_params(params, result.trainer.model.config, model_dir, step)

    return gin_cli.run_main(argv, body, train_module.REQUIRED_MACROS, USAGE)


if __name__ == "__main__":
    sys.exit(main())
