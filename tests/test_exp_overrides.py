"""Command-line values always win over experiment presets (`+exp=NAME`), for every key of every exp file.

Walks each `configs/<app>/exp/*.yaml`, gives every leaf key (list items included) a new value
of the same type on the command line next to `+exp=NAME`, and checks the composed config holds
the command-line value. The keys an experiment sets for another launcher in a preset block
(PURE's `sample:` block, read by launch/sample_pure.py, and `run.device`) are checked through
that launcher's own view of the config, where the preset used to replace the command line.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from common.config import CONFIG_ROOT, REPO_ROOT, compose_config, split_hydra

EXP_FILES = sorted(CONFIG_ROOT.glob("*/exp/*.yaml"))


def _register(app: str) -> None:
    if app == "varsr":
        from varsr.config import register_configs
        from varsr.evaluate import register_configs as register_sample
    else:
        from pure.config import register_configs
        from pure.evaluate import register_configs as register_sample
    register_configs()
    register_sample()


def _load(path: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path)) or {}  # OmegaConf's YAML: 1.0e12 is a float


def _leaves(node, prefix=""):
    """(dotted key, value) of every leaf; lists of dicts are walked by index, other lists are leaves."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k != "defaults":
                yield from _leaves(v, f"{prefix}{k}.")
    elif isinstance(node, list) and node and all(isinstance(x, dict) for x in node):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{prefix}{i}.")
    else:
        yield prefix[:-1], node


def _other(value, key: str = "x"):
    """A different value of the same type, and its command-line spelling.

    Strings become an absolute path-like text: exp files write paths as ``${repo:...}`` (resolved
    against the repository), and a new value must not depend on that resolution."""
    if isinstance(value, bool):
        return (not value), str(not value).lower()
    if isinstance(value, int):
        return value + 3, str(value + 3)
    if isinstance(value, float):
        return value * 2 + 0.5, repr(value * 2 + 0.5)
    if isinstance(value, list):
        return ["cli_a", "cli_b"], "[cli_a,cli_b]"
    text = f"/cli/{key}"  # strings and null (Optional[str] keys here)
    return text, f"'{text}'"


@pytest.mark.parametrize("path", EXP_FILES, ids=lambda p: f"{p.parent.parent.name}/{p.stem}")
def test_every_exp_key_is_overridable_from_the_command_line(path):
    app, name = path.parent.parent.name, path.stem
    _register(app)
    leaves = [(k, v) for k, v in _leaves(_load(path)) if not k.startswith("sample.")]
    assert leaves, f"{path} sets no keys"
    wanted = {k: _other(v, k) for k, v in leaves}
    cfg = compose_config(app, "train", [f"+exp={name}", *(f"{k}={cli}" for k, (_, cli) in wanted.items())])
    for key, (value, _) in wanted.items():
        got = OmegaConf.select(cfg, key)  # a str-typed schema key keeps `true` as "True"
        assert got == value or str(got).lower() == str(value).lower(), f"{path.name}: command-line {key} lost"


@pytest.mark.parametrize(
    "path", [p for p in EXP_FILES if "defaults" in (_load(p))], ids=lambda p: f"{p.parent.parent.name}/{p.stem}"
)
def test_command_line_group_choice_beats_the_exp_default_override(path):
    app, name = path.parent.parent.name, path.stem
    _register(app)
    chosen = [next(iter(d.items())) for d in _load(path)["defaults"]]
    for group, option in chosen:
        group = group.removeprefix("override ").strip("/")
        others = sorted(p.stem for p in (CONFIG_ROOT / app / group).glob("*.yaml") if p.stem != option)
        cfg = compose_config(app, "train", [f"+exp={name}", f"{group}={others[0]}"])
        expected = OmegaConf.load(CONFIG_ROOT / app / group / f"{others[0]}.yaml")
        got = cfg[group]
        assert all(got[k] == v for k, v in expected.items() if k != "defaults"), (group, others[0])


def _sample_pure_view():
    spec = importlib.util.spec_from_file_location("sample_pure_launcher", REPO_ROOT / "launch" / "sample_pure.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.sample_view


@pytest.mark.parametrize("path", sorted(CONFIG_ROOT.glob("pure/exp/*.yaml")), ids=lambda p: p.stem)
def test_sampling_keys_on_the_command_line_beat_the_exp_sample_block(path):
    """The `vq_ckpt` case of issue 8: `+exp=quick vq_ckpt=X` used the exp's `sample.vq_ckpt: null`."""
    _register("pure")
    block = _load(path).get("sample") or {}
    given = {
        "vq_ckpt": "my_vq.pt",
        "resolution": 77,
        "max_new_tokens": 33,
        "image_only": False,
        "device": "cuda",
        **{k: _other(v, k)[0] for k, v in block.items()},
    }
    spell = {
        k: (str(v).lower() if isinstance(v, bool) else f"'{v}'" if isinstance(v, str) else v) for k, v in given.items()
    }
    raw, hc = split_hydra(
        compose_config(
            "pure",
            "sample",
            [f"+exp={path.stem}", "lr_dir=x", *(f"{k}={v}" for k, v in spell.items())],
            hydra_node=True,
        )
    )
    view = _sample_pure_view()(raw, hc)
    assert {k: view[k] for k in given} == given
    if block:  # without command-line values, the exp's block still applies (it is a preset, not ignored)
        raw, hc = split_hydra(compose_config("pure", "sample", [f"+exp={path.stem}", "lr_dir=x"], hydra_node=True))
        view = _sample_pure_view()(raw, hc)
        assert {k: view[k] for k in block} == block


def test_preset_block_respects_nested_command_line_keys():
    from common.config import apply_preset, cli_keys

    given = cli_keys(["sjd.window=8", "+extra=1", "++cfg=0.5"])
    assert given == {"sjd.window", "extra", "cfg"}
    out = apply_preset(
        {"cfg": 0.5, "sjd": {"window": 8, "enabled": False}},
        {"cfg": 1.0, "sjd": {"window": 16, "enabled": True}},
        given,
    )
    assert out == {"cfg": 0.5, "sjd": {"window": 8, "enabled": True}}
