"""Named contrastive-training recipes: complete settings of every ``cl.*`` item switch.

``cl.recipe`` picks one of :data:`CL_RECIPES`; it fills **every** switch in
:data:`RECIPE_SWITCHES`, and any switch the config file or a ``--set`` names explicitly
overrides the recipe's value (``training.config.build_config``). ``cl.enabled`` is not part of a
recipe: ``cl.enabled: false`` is the no-contrastive baseline whatever the recipe.

Sources (CTVIS, Ying et al., ICCV 2023, arXiv 2307.12616; official code
https://github.com/KainingYing/CTVIS at ``c1ed15c``, ``ctvis/modeling/cl_plugin/``):

* ``official``: the released code, ``CTCLPlugin`` with ``MOMENTUM_EMBED True`` and
  ``NOISE_EMBED False``, i.e. the defaults that trained the released checkpoints:
  MA positive with probability 0.5, the first *later* raw embedding when an instance has no
  earlier one (with the code's guard bug), negatives = every other query of frame t-1, a
  second Hungarian pass for the CL matching on unpadded masks.
* ``paper``: Sec. 3.2-3.3 / eq. 5 as written: the positive is always the MA (momentum-
  averaged) embedding of the anchor's instance in the memory bank; negatives are the MA
  embeddings of the *other* instances in the bank ("major") plus the background queries of
  frame t-1 ("local supplementary", Table 4's choice); a disappeared instance receives, with a
  small probability, the embedding of *another instance* of the same frame as noise, which
  enters its MA but is not an anchor itself; no contrastive item for an instance's first
  appearance; one Hungarian assignment (the criterion's) gives every instance its embedding.
  The paper does not publish the noise probability: 0.1 here (the code history used 0.95,
  then 0.001; ``scripts/table3.py``'s "+ noise" row uses 0.1).
* the Table 3 / Fig. 4 study ladder, each row one step from the previous one, all with the
  paper's matching and no first-appearance items:
  ``single_ref`` (Table 3 "baseline": positive = the instance's embedding at t-1, negatives =
  every other query of t-1) -> ``multi_ref`` (Fig. 4's IDOL-style multi-reference baseline,
  the official ``MultiRefCLPlugin``: anchors in the first frame, positives in every other
  frame) -> ``memory_bank`` (Table 3 "+ memory bank": positive = the latest embedding in the
  bank) -> ``memory_bank_ma`` (Table 3 "+ momentum": the bank's MA embeddings are the keys,
  positive and major negatives) -> ``paper`` (Table 3 "+ noise", all components).

The full table, with the equation or official line behind every value, is in
``training/README.md`` ("Contrastive recipes").
"""

from __future__ import annotations

from typing import Any

__all__ = ["CL_RECIPES", "RECIPE_NAMES", "RECIPE_SWITCHES", "recipe_switches"]

RECIPE_SWITCHES: tuple[str, ...] = (
    "plugin",
    "positive_mode",
    "ma_prob",
    "future_positive",
    "fix_future_guard",
    "negative_major",
    "negative_supplementary",
    "num_negatives",
    "noise_prob",
    "noise_source",
    "noise_as_anchor",
    "detach_memory",
    "cl_match",
    "fusion_window",
)
"""The ``ClConfig`` fields a recipe sets (all item-construction switches)."""

# What every study recipe shares: the paper's single Hungarian assignment, no item for an
# instance's first appearance (guard fixed in case it is re-enabled), all negatives, fused
# embedding over the whole clip (eq. 2), gradients through the bank (unspecified in the paper;
# the official code does not detach).
_PAPER_COMMON: dict[str, Any] = {
    "plugin": "ctcl",
    "future_positive": False,
    "fix_future_guard": True,
    "negative_supplementary": "local",
    "num_negatives": None,
    "noise_prob": 0.0,
    "noise_source": "other_instances",
    "noise_as_anchor": False,
    "detach_memory": False,
    "cl_match": "criterion_padded",
    "fusion_window": None,
}

CL_RECIPES: dict[str, dict[str, Any]] = {
    "official": {
        "plugin": "ctcl",
        "positive_mode": "ma",
        "ma_prob": 0.5,
        "future_positive": True,
        "fix_future_guard": False,
        "negative_major": "prev_frame_raw",
        "negative_supplementary": "local",
        "num_negatives": None,
        "noise_prob": 0.0,
        "noise_source": "any_query",
        "noise_as_anchor": True,
        "detach_memory": False,
        "cl_match": "separate_unpadded",
        "fusion_window": None,
    },
    "single_ref": {
        **_PAPER_COMMON,
        "positive_mode": "prev_frame",
        "ma_prob": 0.0,
        "negative_major": "prev_frame_raw",
    },
    "multi_ref": {
        **_PAPER_COMMON,
        "plugin": "multi_ref",
        "positive_mode": "prev_frame",  # unused by the multi-reference items
        "ma_prob": 0.0,
        "negative_major": "prev_frame_raw",  # unused: every other query of each frame
    },
    "memory_bank": {
        **_PAPER_COMMON,
        "positive_mode": "latest",
        "ma_prob": 0.0,
        "negative_major": "prev_frame_raw",
    },
    "memory_bank_ma": {
        **_PAPER_COMMON,
        "positive_mode": "ma",
        "ma_prob": 1.0,
        "negative_major": "memory_ma",
    },
    "paper": {
        **_PAPER_COMMON,
        "positive_mode": "ma",
        "ma_prob": 1.0,
        "negative_major": "memory_ma",
        "noise_prob": 0.1,
    },
}
"""Recipe name -> the value of every switch in :data:`RECIPE_SWITCHES`."""

RECIPE_NAMES: tuple[str, ...] = tuple(CL_RECIPES)


def recipe_switches(name: str) -> dict[str, Any]:
    """The switch values of recipe ``name`` (a fresh dict).

    Raises:
        KeyError: unknown recipe (the config loader reports it as a ``ConfigError``).
    """
    return dict(CL_RECIPES[name])
