"""Value rules for every key that takes a number, shared by the command line and the web page
(issue 16: bad cases 8 and 9, and the poor class "values accepted that cannot mean anything").

The rules live next to the documented keys (`common.config.checks` / `relations`); the command line
applies them when the config is built and the web demo applies the same schema to every request.
"""

from __future__ import annotations

import dataclasses
import functools
import typing

import numpy as np
import pytest
from omegaconf import OmegaConf

from common.config import compose_config, to_dataclass


def _build(app: str, name: str, overrides: list[str]):
    """The typed config the launcher builds: groups (``model=tiny``) composed once per set, values
    merged over it as Hydra's overrides would be (composing per case costs seconds)."""
    groups = tuple(o for o in overrides if o.split("=")[0] in ("model", "degradation"))
    values = [o for o in overrides if o.split("=")[0] not in ("model", "degradation")]
    schema, base = _composed(app, name, groups)
    return to_dataclass(schema, OmegaConf.merge(base, OmegaConf.from_dotlist(values)))


@functools.cache
def _composed(app: str, name: str, groups: tuple[str, ...]):
    if (app, name) == ("varsr", "sample"):
        from varsr.evaluate import SampleRunConfig as schema
        from varsr.evaluate import register_configs
    elif (app, name) == ("pure", "sample"):
        from pure.evaluate import PureSampleConfig as schema
        from pure.evaluate import register_configs
    elif (app, name) == ("varsr", "train"):
        from varsr.config import VARSRTrainConfig as schema
        from varsr.config import register_configs
    elif (app, name) == ("pure", "train"):
        from pure.config import PureTrainConfig as schema
        from pure.config import register_configs
    else:
        from common.degradation.folder import DegradeConfig as schema

        register_configs = lambda: None  # noqa: E731
    register_configs()
    extra = {"sample": ["lr_dir=x"], "degrade": ["hr_dir=x", "out_dir=y"]}.get(name, [])
    return schema, compose_config(app, name, [*extra, *groups])


REFUSED = [
    # bad case 8: a forced square output of 12000^2 went around max_output_pixels (12.6 GB)
    ("varsr", "sample", ["out_size=12000"], "out_size=12000, max_output_pixels=67108864 is not allowed"),
    # bad case 9: PURE's model resolution made a 100000^2 bucket (killed at 17.2 GB)
    ("pure", "sample", ["resolution=100000"], "resolution=100000, max_output_pixels=67108864 is not allowed"),
    ("pure", "sample", ["out_size=9000"], "out_size=9000"),
    # the examples
    ("varsr", "sample", ["cfg=inf"], "cfg=inf is not allowed: must be a finite number"),
    ("pure", "sample", ["temperature=nan"], "temperature=nan is not allowed: must be a finite number"),
    ("varsr", "sample", ["seed=-1"], "seed=-1 is not allowed: must be between 0 and 4294967295"),
    ("pure", "sample", ["seed=4294967296"], "seed=4294967296 is not allowed"),
    ("varsr", "sample", ["tile_overlap=32"], "must be smaller than the tile"),  # d24 tiles are 32 tokens
    ("varsr", "sample", ["model=tiny", "tile_overlap=6"], "model.patch_nums=[1, 2, 3, 4, 5, 6]"),
    ("pure", "sample", ["scale=4", "tile_overlap=128"], "tile_overlap=128, scale=4.0, resolution=512"),
    ("pure", "sample", ["sjd.window=100000"], "sjd.window=100000 is not allowed: must be between 2 and 64"),
    ("pure", "sample", ["sjd.window=1"], "sjd.window=1"),  # SJD refused it only once generating
    ("pure", "sample", ["resolution=500"], "must be a multiple of one size token"),
    ("pure", "sample", ["resolution=0"], "resolution=0 is not allowed"),
    # our own cases: keys that had no rule at all
    ("pure", "sample", ["sjd.active_from=100", "sjd.active_until=10"], "active_from <= active_until"),
    ("varsr", "sample", ["tile_cfg=-1"], "tile_cfg=-1.0 is not allowed"),
    ("varsr", "sample", ["fastvar.last_ratio=1.5"], "fastvar.last_ratio=1.5 is not allowed"),
    (
        "varsr",
        "train",
        ["optim.betas=[0.9,1.0]"],
        "optim.betas=[0.9, 1.0] is not allowed: must be two values in [0, 1)",
    ),
    ("varsr", "train", ["schedule.warmup_start=2"], "schedule.warmup_start=2.0"),
    ("varsr", "train", ["ema.decay=1.5"], "ema.decay=1.5"),
    ("varsr", "train", ["degradation.noise_range=[30,1]"], "degradation.noise_range=[30, 1] is not allowed"),
    ("varsr", "train", ["validation.seed=-5"], "validation.seed=-5"),
    ("pure", "train", ["dropout=1.5"], "dropout=1.5"),
    ("pure", "train", ["optim.lr=nan"], "optim.lr=nan"),
    ("pure", "train", ["logging.peak_flops=0"], "logging.peak_flops=0.0"),
    ("common", "degrade", ["degradation.sinc_prob=2"], "degradation.sinc_prob=2.0"),
    ("common", "degrade", ["seed=-1"], "seed=-1"),
]


@pytest.mark.parametrize("app,name,overrides,needle", REFUSED, ids=[" ".join(r[2]) for r in REFUSED])
def test_meaningless_values_are_refused_naming_the_key(app, name, overrides, needle):
    with pytest.raises(ValueError) as e:
        _build(app, name, overrides)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize(
    "app,name,overrides",
    [
        ("varsr", "sample", ["out_size=8192", "tile_overlap=31", "seed=4294967295", "cfg=0"]),
        ("pure", "sample", ["resolution=32", "sjd.window=64", "out_size=8192"]),
        ("pure", "sample", ["sjd.window=2", "scale=4", "tile_overlap=127"]),
        ("pure", "sample", ["vq_size=tiny", "resolution=8"]),
        ("varsr", "train", ["optim.betas=[0.0,0.999]", "degradation.noise_range=[0,0]"]),
    ],
)
def test_the_limits_themselves_are_accepted(app, name, overrides):
    _build(app, name, overrides)


def test_sample_varsr_out_size_refused_before_anything_runs(tmp_path, capsys):
    from tests.folder_cases import load_launcher, make_folder, user_error

    lr = make_folder(tmp_path / "lr", {"a": (16, 16)})
    args = [f"lr_dir={lr}", f"out_dir={tmp_path / 'out'}", "model=tiny", "ckpt=null", "vae_ckpt=null", "out_size=12000"]
    line = user_error(capsys, load_launcher("sample_varsr").main, args)
    assert "out_size=12000" in line and "max_output_pixels" in line
    assert not (tmp_path / "out").exists()


def _numeric(tp) -> bool:
    args = typing.get_args(tp) or (tp,)
    return any(a in (int, float) for a in args)


def test_every_numeric_key_has_a_rule():
    """Walk every app schema: each int/float key has a `checks` rule or takes part in a `relations` rule.

    Model architecture nodes (`VARSRModelConfig`) are exempt: a model's own shape keys are checked
    when the model is built and are not typed by users per run."""
    from common.degradation.folder import DegradeConfig
    from common.metrics.config import EvaluateConfig
    from pure.config import PretokenizeConfig, PureTrainConfig
    from pure.evaluate import PureSampleConfig
    from tests.folder_cases import load_launcher
    from varsr.config import VARSRTrainConfig
    from varsr.evaluate import SampleRunConfig
    from varsr.model.config import VARSRModelConfig
    from webdemo.config import WebDemoConfig

    roots = [VARSRTrainConfig, PureTrainConfig, PretokenizeConfig, SampleRunConfig, PureSampleConfig]
    roots += [DegradeConfig, EvaluateConfig, WebDemoConfig, load_launcher("finetune_vq").VQFinetuneConfig]
    missing, seen = [], set()

    def walk(cls):
        if cls in seen or cls is VARSRModelConfig:
            return
        seen.add(cls)
        ruled = set(getattr(cls, "__config_checks__", {}))
        ruled |= {k.split(".")[0] for r in getattr(cls, "__config_relations__", ()) for k in r.keys}
        for f in dataclasses.fields(cls):
            tp = typing.get_type_hints(cls)[f.name]
            inner = [a for a in (typing.get_args(tp) or (tp,)) if dataclasses.is_dataclass(a)]
            inner += [a for a in typing.get_args(tp) for a in typing.get_args(a) if dataclasses.is_dataclass(a)]
            for sub in inner:
                walk(sub)
            if _numeric(tp) and f.name not in ruled:
                missing.append(f"{cls.__name__}.{f.name}")

    for root in roots:
        walk(root)
    assert not missing, f"numeric keys without a value rule: {missing}"


@pytest.fixture(scope="module")
def host():
    from webdemo.host import ModelHost

    entry = {"model": "tiny", "ckpt": None, "vae_ckpt": None}
    pure = {"model": "tiny", "ckpt_dir": None, "vq_ckpt": None, "vq_size": "tiny", "resolution": 8}
    return ModelHost({"varsr": {"t": entry}, "pure": {"t": {**pure, "max_new_tokens": 30}}}, device="cpu")


@pytest.mark.parametrize(
    "app,cfg,temperature,seed,needle",
    [
        ("varsr", float("inf"), 1.0, 0, "cfg=inf is not allowed: must be a finite number"),
        ("varsr", 6.0, 1.0, -1, "seed=-1 is not allowed: must be between 0 and 4294967295"),
        ("varsr", -2.0, 1.0, 0, "cfg=-2.0 is not allowed: must be >= 0.0"),
        ("varsr", 6.0, 1.0, 1.5, "seed"),
        ("pure", float("nan"), 0.9, 0, "cfg=nan is not allowed: must be a finite number"),
        ("pure", 0.8, 0.9, None, "seed must be a number, got None"),
    ],
)
def test_web_page_refuses_what_the_command_line_refuses(host, app, cfg, temperature, seed, needle):
    from webdemo.host import DemoError, Request

    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(DemoError) as e:
        host.run(Request(app, "t", cfg, temperature, seed), img)
    assert needle in str(e.value), str(e.value)
    if seed is not None and not isinstance(seed, float):  # the command line gives the very same sentence
        with pytest.raises(ValueError) as cli:
            _build(app, "sample", [f"cfg={cfg}", f"temperature={temperature}", f"seed={seed}"])
        assert str(cli.value) == str(e.value)


def test_web_checkpoint_entry_over_the_output_limit_is_a_message():
    # bad case 8 through the page: the entry's out_size is checked like a command-line value
    from webdemo.host import DemoError, ModelHost, Request

    entry = {"model": "tiny", "ckpt": None, "vae_ckpt": None, "out_size": 12000}
    host = ModelHost({"varsr": {"big": entry}}, device="cpu")
    with pytest.raises(DemoError, match=r"checkpoint 'big': out_size=12000, max_output_pixels=67108864 is not"):
        host.run(Request("varsr", "big", 6.0, 1.0, 0), np.zeros((8, 8, 3), np.uint8))
