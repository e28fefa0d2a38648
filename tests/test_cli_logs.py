"""A healthy run's log: no ERROR lines from gin's include probing, SeqIO's uncached-source
warning once per process, and no "training" wording from commands that do not train.
(tests/test_install.py checks a whole installed training run for ERROR lines.)"""

from __future__ import annotations

import logging

from absl import logging as absl_logging

from fiat_t5x.training import initial_params, log_noise
from gin import resource_reader


def test_gin_include_probes_log_nothing(caplog):
    log_noise.install()
    caplog.set_level(logging.INFO)
    # What gin does for `include 'models/t5_1_1/architecture.gin'` in every search path but one.
    assert not resource_reader.system_path_file_exists("models/t5_1_1/architecture.gin")
    assert [r for r in caplog.records if "architecture.gin" in r.getMessage()] == []
    logging.getLogger().error("a real error")  # other root records pass
    assert [r.getMessage() for r in caplog.records] == ["a real error"]


def test_uncached_source_warning_once_per_process():
    once = log_noise.OncePerProcess()
    logger = logging.getLogger("test_cli_logs.once")
    logger.addFilter(once)
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger.addHandler(Keep())
    logger.propagate = False
    for _ in range(5):  # one per task of a mixture, and again at every pipeline restart
        logger.warning("Using an uncached FunctionDataset for training is not recommended ...")
        logger.warning("something else")
    assert records.count("something else") == 5
    assert sum(r.startswith("Using an uncached") for r in records) == 1


def test_install_filters_absl_records(caplog):
    log_noise.install()
    caplog.set_level(logging.WARNING)
    for _ in range(3):
        absl_logging.warning("Using an uncached FunctionDataset for training ...")
    assert sum("uncached FunctionDataset" in r.getMessage() for r in caplog.records) <= 1


def test_random_init_base_is_not_called_training(caplog, monkeypatch):
    """eval and infer rebuild a random-init base through the same function as train."""

    import jax

    from fiat_t5x.models import presets
    from fiat_t5x.models.model import EncoderDecoderModel
    from fiat_t5x.training.optimizers import TrainableSelector
    from fiat_t5x.training.partitioning import Partitioner

    caplog.set_level(logging.INFO)
    initial_params.initial_params(
        EncoderDecoderModel(presets.micro()),
        Partitioner(devices=jax.devices()[:1]),
        None,
        TrainableSelector([".*"]),
        seed=3,
    )
    messages = [r.getMessage() for r in caplog.records]
    assert any("random init (seed 3)" in m for m in messages), messages
    assert not any("training" in m for m in messages), messages
