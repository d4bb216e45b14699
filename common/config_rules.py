"""Value rules of the config schemas: per-key `checks`, cross-key `relations`, finite floats.

Types are OmegaConf's job; ranges, choices and rules between keys are declared here and next to the
documented keys (``@checks(seed=SEED)`` on a schema dataclass), and `check_values` applies them when
``common.config.validate`` builds a config, so the command line and the web demo refuse the same
values with the same one-line message naming the key.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf


@dataclass(frozen=True)
class Rule:
    """An allowed range or set of values of one config key (see `checks`)."""

    ok: Any  # callable: value -> bool
    allowed: str  # what the error message says is allowed


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def at_least(lo) -> Rule:
    return Rule(lambda v: is_number(v) and v >= lo, f">= {lo}")


def above(lo) -> Rule:
    return Rule(lambda v: is_number(v) and v > lo, f"> {lo}")


def between(lo, hi) -> Rule:
    return Rule(lambda v: is_number(v) and lo <= v <= hi, f"between {lo} and {hi}")


# seeds feed numpy (non-negative only) and torch generators as seed + image/rank index
SEED = between(0, 2**32 - 1)
PROBABILITY = between(0.0, 1.0)
FINITE = Rule(is_number, "a finite number")  # any sign means something (e.g. grad_clip <= 0: off)
# a [lo, hi] range of a uniform draw (degradation strengths, sigmas, JPEG qualities)
RANGE = Rule(
    lambda v: len(v) == 2 and all(is_number(x) for x in v) and 0 <= v[0] <= v[1], "[lo, hi] with 0 <= lo <= hi"
)


@dataclass(frozen=True)
class Relation:
    """A rule between keys of one schema node (see `relations`); ``ok(node)`` -> bool."""

    keys: tuple[str, ...]  # the keys it reads (all set, i.e. not None, or the rule is not checked)
    ok: Any
    allowed: str  # what the error message says must hold


def one_of(*choices) -> Rule:
    return Rule(lambda v: v in choices, "one of " + ", ".join(str(c) for c in choices))


DEVICE = Rule(
    lambda v: v in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", v) is not None, "auto, cpu, cuda or cuda:N"
)


def checks(**rules: Rule):
    """Class decorator: value rules of a schema's keys, checked by `validate` when the config is built.

    Types are OmegaConf's job; ranges and enums are declared here, next to the documented keys,
    so ``data.batch_size=-1`` or ``color_fix=bogus`` is a one-line error naming the key and what is
    allowed, before any model loads. ``None`` (an Optional left unset) and ``???`` are not checked.
    Subclasses inherit and may extend the rules.
    """

    def deco(cls):
        cls.__config_checks__ = {**getattr(cls, "__config_checks__", {}), **rules}
        return cls

    return deco


def square_within(side_key: str, limit_key: str = "max_output_pixels") -> Relation:
    """``side_key`` x ``side_key`` pixels (a forced square output, a model resolution) fit ``limit_key``."""
    return Relation(
        (side_key, limit_key),
        lambda c: c[side_key] ** 2 <= c[limit_key],
        f"{side_key}^2 must be at most {limit_key} (raise {limit_key} to write images that large)",
    )


def relations(*rels: Relation):
    """Class decorator: rules between keys of a schema (``tile_overlap < tile``, ``out_size^2 <=
    max_output_pixels``), checked by `validate` after the per-key `checks`; inherited like them."""

    def deco(cls):
        cls.__config_relations__ = (*getattr(cls, "__config_relations__", ()), *rels)
        return cls

    return deco


def _check_finite(cfg, prefix: str) -> None:
    """No NaN or infinity in any float of a node (a guidance weight or temperature of inf means nothing)."""
    from omegaconf import ListConfig

    items = cfg.items_ex(resolve=False) if isinstance(cfg, DictConfig) else enumerate(cfg)
    for key, _ in list(items):
        node = cfg._get_node(key)
        if isinstance(node, (DictConfig, ListConfig)) or node._is_none() or node._is_missing():
            continue
        value = node._value()
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{prefix}{key}={value!r} is not allowed: must be a finite number")


def check_values(cfg, prefix: str = "") -> None:
    """Apply the `checks` and `relations` rules of every schema node of a merged structured config
    (recursively), and refuse non-finite floats anywhere."""
    from omegaconf import ListConfig

    _check_finite(cfg, prefix)
    rules = getattr(OmegaConf.get_type(cfg), "__config_checks__", {}) if isinstance(cfg, DictConfig) else {}
    for key, rule in rules.items():
        if key not in cfg or OmegaConf.is_missing(cfg, key) or cfg[key] is None:
            continue
        value = cfg[key]
        try:
            ok = rule.ok(value)
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(f"{prefix}{key}={value!r} is not allowed: must be {rule.allowed}")
    rels = getattr(OmegaConf.get_type(cfg), "__config_relations__", ()) if isinstance(cfg, DictConfig) else ()
    for rel in rels:
        if any(_unset(cfg, k) for k in rel.keys):
            continue
        if not rel.ok(cfg):
            given = ", ".join(f"{prefix}{k}={OmegaConf.select(cfg, k)!r}" for k in rel.keys)
            raise ValueError(f"{given} is not allowed: {rel.allowed}")
    items = cfg.items_ex(resolve=False) if isinstance(cfg, DictConfig) else enumerate(cfg)
    for key, _ in list(items):
        node = cfg._get_node(key)
        if isinstance(node, (DictConfig, ListConfig)) and not node._is_none() and not node._is_missing():
            check_values(node, f"{prefix}{key}.")


def _unset(cfg, dotted: str) -> bool:
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, DictConfig) or part not in node or OmegaConf.is_missing(node, part):
            return True
        node = node[part]
    return node is None
