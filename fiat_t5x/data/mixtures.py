"""Flan-style mixture balancing as `seqio.Mixture`s with computed rates.

A collection mixture gives each base task an examples-proportional rate
`min(n, cap) ** (1 / temperature)`, splits it across the task's prompt-setting variants in the
given proportions (Flan 2022: zero-/few-shot x options/no options, equal shares), and adds the
inverted variants at `inverted_rate` times the base rate (split by `inverted_settings`). A
weighted mixture combines sub-mixtures with weights; SeqIO normalises each sub-mixture's rates
before applying its weight. `register_flan_collections_mixture` weighs whole collections with
the Flan 2022 weights (Flan 2021 0.40, T0-SF 0.32, NIv2 0.20, CoT 0.05, Dialog 0.03), for any
collection mixtures a user has registered. `effective_rates` gives every task's final sampling
share, recursively through sub-mixtures, which `fiat-t5x mixture-rates` prints.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import seqio

logger = logging.getLogger(__name__)

# Flan 2022's prompt settings: equal shares of zero-/few-shot with and without options; the
# few-shot share split between its two kinds (same template, mixed templates).
FLAN_PROMPT_SETTINGS: Mapping[str, float] = {
    "zsopt": 0.25,
    "zsnoopt": 0.25,
    "fsopt": 0.125,
    "fsopt_mix": 0.125,
    "fsnoopt": 0.125,
    "fsnoopt_mix": 0.125,
}
DEFAULT_INVERTED_RATE = 0.3
INVERTED_ZERO_SHOT: Mapping[str, float] = {"inverted": 1.0}
# The Flan 2022 mixture: the weight of each collection (Longpre et al., 2023).
FLAN_2022_COLLECTION_WEIGHTS: Mapping[str, float] = {
    "flan2021": 0.40,
    "t0sf": 0.32,
    "niv2": 0.20,
    "cot": 0.05,
    "dialog": 0.03,
}


def examples_proportional_rates(
    num_examples: Mapping[str, int], *, cap: int | None = None, temperature: float = 1.0
) -> dict[str, float]:
    """name -> `min(n, cap) ** (1 / temperature)` (unnormalised; SeqIO normalises).

    Temperature 1 is plain examples-proportional mixing; larger temperatures flatten it
    towards uniform.
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: must be positive")
    if cap is not None and cap <= 0:
        raise ValueError(f"cap={cap}: must be positive (or None for no cap)")
    rates = {}
    for name, n in num_examples.items():
        if n < 0:
            raise ValueError(f"{name}: negative example count {n}")
        capped = n if cap is None else min(n, cap)
        rates[name] = float(capped) ** (1.0 / temperature)
    return rates


def _shares(settings: Mapping[str, float], what: str) -> dict[str, float]:
    total = sum(settings.values())
    if not settings or total <= 0 or min(settings.values()) < 0:
        raise ValueError(f"{what}={dict(settings)}: need non-negative shares, some positive")
    return {suffix: share / total for suffix, share in settings.items() if share > 0}


def collection_rates(
    num_examples: Mapping[str, int],
    *,
    prompt_settings: Mapping[str, float],
    cap: int | None = None,
    temperature: float = 1.0,
    inverted_rate: float | None = DEFAULT_INVERTED_RATE,
    inverted_settings: Mapping[str, float] = INVERTED_ZERO_SHOT,
) -> dict[str, float]:
    """Variant task name -> rate for base tasks (`num_examples` keyed by base name).

    `<base>_<suffix>` gets `rate * share` for each prompt setting (shares normalised to 1), and
    each inverted setting gets `rate * inverted_rate * share` (its shares normalised to 1 too).
    """
    shares = _shares(prompt_settings, "prompt_settings")
    inverted = _shares(inverted_settings, "inverted_settings") if inverted_rate else {}
    rates: dict[str, float] = {}
    for base, rate in examples_proportional_rates(
        num_examples, cap=cap, temperature=temperature
    ).items():
        for suffix, share in shares.items():
            rates[f"{base}_{suffix}"] = rate * share
        for suffix, share in inverted.items():
            rates[f"{base}_{suffix}"] = rate * inverted_rate * share
    return rates


def _replace(name: str, overwrite: bool) -> None:
    if name in seqio.MixtureRegistry.names():
        if not overwrite:
            raise ValueError(
                f"mixture {name!r} is already registered; pass overwrite=True to replace it"
            )
        seqio.MixtureRegistry.remove(name)


def register_rates_mixture(
    name: str, rates: Mapping[str, float], *, overwrite: bool = False
) -> seqio.Mixture:
    """A mixture of registered tasks/mixtures with the given rates (errors name missing ones)."""
    known = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
    missing = [task for task in rates if task not in known]
    if missing:
        raise ValueError(
            f"mixture {name!r}: {missing} are not registered; register the tasks (e.g. with "
            "register_flan_variants) first, or drop them from the mixture"
        )
    _replace(name, overwrite)
    return seqio.MixtureRegistry.add(name, [(task, rate) for task, rate in rates.items()])


def register_collection_mixture(
    name: str,
    num_examples: Mapping[str, int],
    *,
    prompt_settings: Mapping[str, float] = FLAN_PROMPT_SETTINGS,
    cap: int | None = None,
    temperature: float = 1.0,
    inverted_rate: float | None = DEFAULT_INVERTED_RATE,
    inverted_settings: Mapping[str, float] = INVERTED_ZERO_SHOT,
    overwrite: bool = False,
) -> seqio.Mixture:
    """Registers a collection: base task name -> training examples, see `collection_rates`.

    Counts are the base tasks' train sizes (e.g. `task.num_input_examples("train")` of one
    variant); every `<base>_<suffix>` named by `prompt_settings` (and by `inverted_settings`
    when `inverted_rate` is set) must be registered.
    """
    rates = collection_rates(
        num_examples,
        prompt_settings=prompt_settings,
        cap=cap,
        temperature=temperature,
        inverted_rate=inverted_rate,
        inverted_settings=inverted_settings,
    )
    return register_rates_mixture(name, rates, overwrite=overwrite)


def register_weighted_mixture(
    name: str, weights: Mapping[str, float], *, overwrite: bool = False
) -> seqio.Mixture:
    """Sub-mixtures (or tasks) with weights: a sub-mixture gets `weight / sum(weights)` of samples."""
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(
            f"mixture {name!r}: weights {dict(weights)} must be non-negative, some positive"
        )
    return register_rates_mixture(name, weights, overwrite=overwrite)


def register_flan_collections_mixture(
    name: str,
    collections: Mapping[str, str],
    *,
    weights: Mapping[str, float] = FLAN_2022_COLLECTION_WEIGHTS,
    overwrite: bool = False,
) -> seqio.Mixture:
    """Whole collections weighted like the Flan 2022 mixture.

    Args:
      name: the mixture to register.
      collections: collection key -> a registered mixture (or task), e.g.
        {"cot": "flan_cot", "niv2": "my_niv2"}. Keys are those of `weights`; add your own
        collections with a weight of their own (`weights={**FLAN_2022_COLLECTION_WEIGHTS,
        "mine": 0.1}`). Collections you do not pass are left out, and SeqIO renormalises the
        weights of the others (CoT alone with NIv2: 0.05 / 0.25 and 0.20 / 0.25).
      weights: collection key -> weight.
      overwrite: replace a mixture registered under `name`.
    """
    if not collections:
        raise ValueError(f"mixture {name!r}: give at least one collection")
    unweighted = sorted(set(collections) - set(weights))
    if unweighted:
        raise ValueError(
            f"mixture {name!r}: collection(s) {unweighted} have no weight; known collections: "
            f"{', '.join(weights)}. Pass weights={{**FLAN_2022_COLLECTION_WEIGHTS, "
            f"{unweighted[0]!r}: 0.1}} (or another weight) to add one"
        )
    left_out = [key for key in weights if key not in collections]
    if left_out:
        logger.info("mixture %s: collections %s not given; weights renormalised", name, left_out)
    return register_weighted_mixture(
        name, {mixture: weights[key] for key, mixture in collections.items()}, overwrite=overwrite
    )


def _rate(provider: seqio.Mixture, child: str) -> float:
    rate = provider.rate_per_task_name[child]
    if callable(rate):
        rate = rate(seqio.get_mixture_or_task(child))
    return float(rate)


def effective_rates(mixture: str | seqio.Mixture) -> dict[str, float]:
    """Task name -> its share of the mixture's samples (sums to 1), through sub-mixtures."""
    mixture = seqio.get_mixture_or_task(mixture) if isinstance(mixture, str) else mixture
    if not isinstance(mixture, seqio.Mixture):
        return {mixture.name: 1.0}
    children = {child: _rate(mixture, child) for child in mixture.rate_per_task_name}
    total = sum(children.values())
    if total <= 0:
        raise ValueError(f"mixture {mixture.name!r}: all rates are zero")
    shares: dict[str, float] = {}
    for child, rate in children.items():
        if rate == 0:
            continue
        for task, share in effective_rates(seqio.get_mixture_or_task(child)).items():
            shares[task] = shares.get(task, 0.0) + rate / total * share
    return shares
