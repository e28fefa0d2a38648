"""Before step 1 of a run that reads rationales: is the store complete, and is it the right one?

A training run's tasks join β's rationales by example id when their datasets are built; a
missing validation rationale would otherwise surface at the first evaluation, EVAL_PERIOD steps
of training later, and a store written with another Iβ or another β would be read without a
word. `RationaleChecks` runs at start-up (gin: `train_script.train.start_checks =
[@run_checks.RationaleChecks()]`, see gin/fiat/xor_attriqa.gin) and

  1. finds every rationale-injecting task the run reads (train, and eval when it evaluates);
  2. compares the store's identity with the one this run expects: the sha256 of Iβ
     (IBETA_FILE, IBETA_TASK) and, when BETA is configured, β's identity and decoding;
  3. counts, for every split it will read (and the FIAT inference split, INFER_SPLIT), the
     examples without a rationale: any is an error (unless the task skips missing ones, or it is
     the inference split and a β can generate them then);
  4. records the store's identity in MODEL_DIR/rationale_store.json, so a resumed run with
     another store, or a later `fiat-infer` with another β (`check_trained_identity`), or a
     `fiat-t5x eval` / `infer` reading another store (`check_stores_read_by`), is refused by
     name.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import gin
from fiat_t5x import storage
from fiat_t5x.rationales.injection import RationaleJoin, rationale_joins
from fiat_t5x.rationales.prompt_files import resolve_path
from fiat_t5x.rationales.prompts import PromptSpec, load_prompt
from fiat_t5x.rationales.providers.base import Provider
from fiat_t5x.rationales.store import RationaleStore, StoreIdentity, StoreMismatchError
from fiat_t5x.training.gin_cli import UsageError

logger = logging.getLogger(__name__)

RECORD_FILE = "rationale_store.json"


class MissingRationalesAtStartError(UsageError):
    """Splits the run will read lack rationales; found before any step."""


def describe_beta(identity: StoreIdentity) -> str:
    """β as a person names it: kind, model and decoding."""
    provider = identity.provider
    return (
        f"{provider.get('kind')} model {provider.get('model')!r} with decoding "
        f"{json.dumps(identity.decoding, sort_keys=True)}"
    )


def expected_identity_problems(
    store: RationaleStore, prompt: PromptSpec | None, beta: Provider | None, where: str
) -> list[str]:
    """Why `store` is not what a run with Iβ `prompt` and β `beta` expects (empty: it is)."""
    problems = []
    if prompt is not None and store.identity.ibeta_sha256 != prompt.sha256:
        problems.append(
            f"its Iβ differs from {where}'s IBETA_FILE/IBETA_TASK (store Iβ sha256 "
            f"{store.identity.ibeta_sha256[:12]}, configured {prompt.sha256[:12]})"
        )
    if beta is not None:
        beta.check_settings()
        ibeta = store.identity.ibeta_sha256 if prompt is None else prompt.sha256
        expected = StoreIdentity(beta.identity(), beta.decoding(), ibeta)
        fields = [f for f in store.identity.differences(expected) if f != "ibeta_sha256"]
        if fields:
            problems.append(
                f"its β is {describe_beta(store.identity)}, but BETA is "
                f"{describe_beta(expected)} (differs in {', '.join(fields)})"
            )
    return problems


@gin.configurable
class RationaleChecks:
    """A training start-up check (see the module docstring); called as `check(model_dir,
    datasets)` by `fiat_t5x.train.train` before anything is trained.

    Args:
      ibeta_file / ibeta_task: the Iβ the run expects the store to be written with (None: no
        Iβ check).
      beta: the β the run expects (None: no β check, e.g. for rationales replayed from a file).
      infer_split: the split FIAT inference will read (INFER_SPLIT), checked too.
    """

    def __init__(
        self,
        *,
        ibeta_file: str | None = None,
        ibeta_task: str | None = None,
        beta: Provider | None = None,
        infer_split: str | None = None,
    ) -> None:
        self.ibeta_file = ibeta_file
        self.ibeta_task = ibeta_task
        self.beta = beta
        self.infer_split = infer_split

    def __call__(self, model_dir: str, datasets: Sequence[Any]) -> Callable[[], None] | None:
        """Checks; returns what records the identity, which train() calls once the run is
        known to start (nothing is written to MODEL_DIR by a run that is turned away)."""
        reads = [
            (join, config.split)
            for config in datasets
            if config is not None
            for join in rationale_joins(config.mixture_or_task_name)
            if join.reads(config.split)
        ]
        if not reads:
            logger.info("the run reads no β rationales; nothing to check")
            return None
        if self.infer_split is not None:
            reads += [(j, self.infer_split) for j, _ in reads if j.reads(self.infer_split)]
        by_store: dict[str, list[tuple[RationaleJoin, str]]] = {}
        for join, split in reads:
            by_store.setdefault(join.directory(), []).append((join, split))
        records = [self._check_store(directory, pairs) for directory, pairs in by_store.items()]
        check_recorded_identity(model_dir, records)
        return functools.partial(write_identity, model_dir, records)

    def _prompt(self, store_task: str) -> PromptSpec | None:
        if not self.ibeta_file:
            return None
        return load_prompt(resolve_path(self.ibeta_file), self.ibeta_task or store_task)

    def _check_store(
        self, directory: str, reads: list[tuple[RationaleJoin, str]]
    ) -> dict[str, Any]:
        try:
            store = RationaleStore.open_readonly(directory)
        except FileNotFoundError as e:
            raise UsageError(f"RATIONALE_STORE: {e}") from None
        beta = self.beta if isinstance(self.beta, Provider) else None
        problems = expected_identity_problems(
            store, self._prompt(reads[0][0].store_task), beta, "this run"
        )
        if problems:
            raise StoreMismatchError(
                f"the rationale store {directory} is not the one this run expects: "
                f"{'; '.join(problems)}. Generate a store with this Iβ and β "
                "(`fiat-t5x rationales generate` with the same gin files) or fix the gin values"
            )
        trained = {(join.store_task, split) for join, split in reads if split != self.infer_split}
        missing, checked = [], {}
        for join, split in dict.fromkeys(reads):
            name = f"{join.store_task}/{split}"
            if name in checked:
                continue
            ids, total = join.missing_ids(split, store)
            checked[name] = total - len(ids)
            if not ids:
                continue
            if beta is not None and (join.store_task, split) not in trained:
                logger.info(
                    "%s: %d of %d examples have no rationale yet; FIAT inference will ask β",
                    name,
                    len(ids),
                    total,
                )
            elif join.on_missing == "skip":
                logger.warning(
                    "%s: %d of %d examples have no rationale and will be skipped",
                    name,
                    len(ids),
                    total,
                )
            else:
                missing.append(join.missing_message(split, store, ids, total))
        if missing:
            raise MissingRationalesAtStartError(f"before training: {' | '.join(missing)}")
        return {
            "store_dir": storage.normalize(directory),
            "identity_sha256": store.identity.sha256,
            "identity": store.identity.to_json(),
            "rationales": checked,
        }


def check_recorded_identity(model_dir: str, stores: list[dict[str, Any]]) -> None:
    """Refuses a MODEL_DIR whose rationale_store.json names other stores than `stores`."""
    previous = read_trained_stores(model_dir)
    now = {s["identity_sha256"] for s in stores}
    if previous is not None:
        before = {s["identity_sha256"] for s in previous}
        if before != now:
            was = "; ".join(describe_beta(StoreIdentity.from_json(s["identity"])) for s in previous)
            raise StoreMismatchError(
                f"{model_dir} was trained on rationales of another store (identity "
                f"{', '.join(sorted(x[:12] for x in before))}: {was}); this run reads "
                f"{', '.join(sorted(x[:12] for x in now))}. Resume with the store it was "
                "trained on, or train into a new MODEL_DIR"
            )


def write_identity(model_dir: str, stores: list[dict[str, Any]]) -> None:
    """Writes MODEL_DIR/rationale_store.json (process 0, atomically)."""
    import jax

    if jax.process_index() != 0:
        return
    record = {"format_version": 1, "stores": stores}
    storage.write_text(
        storage.join(model_dir, RECORD_FILE), json.dumps(record, indent=2, sort_keys=True) + "\n"
    )


def read_trained_stores(model_dir: str) -> list[dict[str, Any]] | None:
    """The stores recorded in MODEL_DIR at training start (None: no record)."""
    path = storage.join(model_dir, RECORD_FILE)
    try:
        return list(json.loads(storage.read_text(path))["stores"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{path}: unreadable ({e}); delete it to record the store again") from None


def check_stores_read_by(model_dir: str, mixture_or_task_name: str, split: str) -> None:
    """`fiat-t5x eval` / `infer` of a trained run: every rationale store that `split` of the
    task (or mixture) reads must be the one training recorded in MODEL_DIR (the rationales τ
    learnt from), else StoreMismatchError naming both βs, before anything is restored. A task
    that reads no rationales is not checked."""
    joins = [join for join in rationale_joins(mixture_or_task_name) if join.reads(split)]
    for directory in dict.fromkeys(join.directory() for join in joins):
        check_trained_identity(model_dir, directory)


def check_trained_identity(
    model_dir: str,
    store_dir: str,
    *,
    prompt: PromptSpec | None = None,
    beta: Provider | None = None,
) -> None:
    """Refuses to run τ of `model_dir` on rationales of another store or β than it was trained
    on (FIAT inference); a MODEL_DIR without a record (trained before records) is let through."""
    trained = read_trained_stores(model_dir)
    if not trained:
        logger.warning(
            "%s has no %s: cannot check that τ reads rationales of the β it was trained on",
            model_dir,
            RECORD_FILE,
        )
        return
    identities = [StoreIdentity.from_json(s["identity"]) for s in trained]
    names = "; ".join(describe_beta(i) for i in identities)
    if beta is not None:
        beta.check_settings()
        ibeta = prompt.sha256 if prompt is not None else identities[0].ibeta_sha256
        expected = StoreIdentity(beta.identity(), beta.decoding(), ibeta)
        if all(expected.sha256 != i.sha256 for i in identities):
            diff = ", ".join(identities[0].differences(expected))
            raise StoreMismatchError(
                f"τ in {model_dir} was trained on rationales of β {names}; the configured β is "
                f"{describe_beta(expected)} (differs in {diff}). Use the β τ was trained with "
                "(BETA), or train τ on this β's rationales"
            )
    if RationaleStore.is_store(store_dir):
        store = RationaleStore.open_readonly(store_dir)
        if all(store.identity.sha256 != i.sha256 for i in identities):
            raise StoreMismatchError(
                f"τ in {model_dir} was trained on rationales of β {names}; RATIONALE_STORE "
                f"{store_dir} holds β {describe_beta(store.identity)} (differs in "
                f"{', '.join(identities[0].differences(store.identity))}). Point RATIONALE_STORE "
                "at the store τ was trained on"
            )
