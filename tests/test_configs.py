"""Every config file composes, validates against its schema and instantiates what it describes.

Each YAML under ``configs/`` is claimed by exactly one check below; a file no check claims fails
``test_every_config_file_is_checked``, so a new config cannot land untested. Models are built on
the ``meta`` device (no memory), full sizes included.
"""

from pathlib import Path

import pytest
import torch
import yaml

from common.config import CONFIG_ROOT, compose_config, to_dataclass, validate

ALL_FILES = sorted(str(p.relative_to(CONFIG_ROOT)) for p in CONFIG_ROOT.rglob("*.yaml"))


def _names(folder: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_ROOT / folder).glob("*.yaml"))


CLAIMED: set[str] = set()


def claim(folder: str) -> list[str]:
    names = _names(folder)
    CLAIMED.update(f"{folder}/{n}.yaml" for n in names)
    return names


CLAIMED.update(
    {
        "varsr/train.yaml",
        "varsr/sample.yaml",
        "pure/train.yaml",
        "pure/sample.yaml",
        "common/degrade.yaml",
        "common/evaluate.yaml",
        "common/vq_finetune.yaml",
        "common/web_demo.yaml",
        "common/export_checkpoint.yaml",
        "common/sample_baseline.yaml",
    }
)


# ---------------------------------------------------------------- VARSR
def _varsr_train(overrides):
    from varsr.config import VARSRTrainConfig, register_configs

    register_configs()
    return to_dataclass(VARSRTrainConfig, compose_config("varsr", "train", overrides))


@pytest.mark.parametrize("name", claim("varsr/model"))
def test_varsr_model_configs_build_on_meta(name):
    from varsr.model import build_models

    cfg = _varsr_train([f"model={name}"])
    model, vqvae = build_models(cfg.model, device="meta")
    n = sum(p.numel() for p in model.parameters())
    assert n > 0 and all(p.device.type == "meta" for p in model.parameters())
    if name == "d24":  # the released VARSR.pth
        assert n == 1_101_916_448
        assert sum(p.numel() for p in vqvae.parameters()) == 108_948_355


@pytest.mark.parametrize("name", claim("varsr/exp"))
def test_varsr_experiments_compose(name):
    cfg = _varsr_train([f"+exp={name}"])
    assert cfg.optim.lr > 0 and cfg.data.batch_size > 0


@pytest.mark.parametrize("name", claim("common/data"))
def test_common_data_groups_fit_varsr(name):
    from varsr.data import build_sources

    cfg = _varsr_train([f"data={name}"])
    assert len(cfg.data.sources) >= 1
    if name == "bundled":
        assert len(build_sources(cfg.data)) == 1


def test_varsr_sample_config():
    from varsr.evaluate import SampleRunConfig, register_configs

    register_configs()
    cfg = validate(SampleRunConfig, compose_config("varsr", "sample", ["lr_dir=/x", "cfg=4.0"]))
    assert cfg.cfg == 4.0 and cfg.top_k == 1


# ---------------------------------------------------------------- PURE
def _pure_train(overrides):
    from pure.config import PureTrainConfig, register_configs

    register_configs()
    return validate(PureTrainConfig, compose_config("pure", "train", overrides))


@pytest.mark.parametrize("name", claim("pure/model"))
def test_pure_model_configs_build_on_meta(name):
    from pure.model import ChameleonForCausalLM, config_from_dict

    cfg = _pure_train([f"model={name}"])
    from omegaconf import OmegaConf

    mcfg = config_from_dict(OmegaConf.to_container(cfg.model, resolve=True))
    with torch.device("meta"):
        model = ChameleonForCausalLM(mcfg)
    n = sum(p.numel() for p in model.parameters())
    assert n > 0
    if name == "7b":  # the released nonwhy/PURE shards
        assert n == 7_080_267_776


@pytest.mark.parametrize("name", claim("pure/exp"))
def test_pure_experiments_compose(name):
    cfg = _pure_train([f"+exp={name}"])
    assert cfg.optim.lr > 0


@pytest.mark.parametrize("name", claim("pure/deepspeed"))
def test_pure_deepspeed_configs_are_deepspeed_json(name):
    body = yaml.safe_load((CONFIG_ROOT / "pure/deepspeed" / f"{name}.yaml").read_text())
    assert body["zero_optimization"]["stage"] in (2, 3)


@pytest.mark.parametrize("name", claim("pure/data"))
def test_pure_data_meta_files_parse(name):
    body = yaml.safe_load((CONFIG_ROOT / "pure/data" / f"{name}.yaml").read_text())
    assert body["META"] and all("path" in m for m in body["META"])


def test_pure_sample_config():
    from pure.evaluate import PureSampleConfig, register_configs

    register_configs()
    cfg = validate(PureSampleConfig, compose_config("pure", "sample", ["lr_dir=/x", "cfg=1.0", "temperature=0.7"]))
    assert cfg.cfg == 1.0 and cfg.temperature == 0.7


# ---------------------------------------------------------------- common
@pytest.mark.parametrize("name", claim("common/degradation"))
def test_degradation_presets_compose_and_build(name):
    from common.degradation import DegradationConfig, Degrader

    cfg = compose_config("common", "degrade", [f"degradation={name}", "hr_dir=/a", "out_dir=/b"])
    dcfg = to_dataclass(DegradationConfig, cfg.degradation)
    Degrader(dcfg)
    assert dcfg.scale == 4


@pytest.mark.parametrize("name", claim("common/metrics"))
def test_metric_configs_name_known_metrics(name):
    from common.metrics.stack import PAPER_ORDER

    cfg = compose_config("common", "evaluate", [f"metrics={name}", "sr_dir=/a", "out=/b.json"])
    assert set(cfg.metrics) and set(cfg.metrics) <= set(PAPER_ORDER)


@pytest.mark.parametrize("app", ["varsr", "pure"])
def test_vq_finetune_config(app, repo_root):
    import importlib.util

    spec = importlib.util.spec_from_file_location("finetune_vq", repo_root / "launch" / "finetune_vq.py")
    mod = importlib.util.module_from_spec(spec)
    import sys

    sys.modules["finetune_vq"] = mod  # dataclasses resolve field types through sys.modules
    spec.loader.exec_module(mod)
    cfg = to_dataclass(mod.VQFinetuneConfig, compose_config("common", "vq_finetune", [f"app={app}", "data=lsdir_ffhq"]))
    assert cfg.app == app and cfg.steps > 0 and cfg.data.sources


def test_export_checkpoint_config(repo_root):
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("export_checkpoint", repo_root / "launch" / "export_checkpoint.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["export_checkpoint"] = mod  # dataclasses resolve field types through sys.modules
    spec.loader.exec_module(mod)
    cfg = to_dataclass(mod.ExportConfig, compose_config("common", "export_checkpoint", ["run_dir=/r", "out=/o.pth"]))
    assert (cfg.app, cfg.run_dir, cfg.out, cfg.step, cfg.ema) == ("varsr", "/r", "/o.pth", None, True)


def test_sample_baseline_config():
    """configs/common/sample_baseline.yaml composes into its schema; the YAML's values are the schema's."""
    import dataclasses

    from common.baseline.folder import BaselineConfig, register_configs

    register_configs()
    cfg = to_dataclass(BaselineConfig, compose_config("common", "sample_baseline", ["lr_dir=/x"]))
    defaults = {f.name: f.default for f in dataclasses.fields(BaselineConfig) if f.name not in ("lr_dir", "metrics")}
    assert {k: getattr(cfg, k) for k in defaults} == defaults
    assert set(cfg.metrics) == {"psnr", "ssim"}  # scored like the apps' sampling runs
    with pytest.raises(ValueError, match="method='sr3' is not allowed"):
        to_dataclass(BaselineConfig, compose_config("common", "sample_baseline", ["lr_dir=/x", "method=sr3"]))


def test_web_demo_config_entries_are_valid_sampling_configs():
    """Every checkpoint the web demo offers by default composes into its app's sampling schema."""
    from webdemo.config import WebDemoConfig, register_configs
    from webdemo.host import _sample_config

    register_configs()
    cfg = to_dataclass(WebDemoConfig, compose_config("common", "web_demo", ["port=0"]))
    assert cfg.host == "127.0.0.1"  # localhost unless the user opens it up
    for app in ("varsr", "pure"):
        assert cfg.__dict__[app], app
        for name, entry in cfg.__dict__[app].items():
            sample = _sample_config(app, entry)
            assert sample.model is not None, (app, name)


@pytest.mark.parametrize("name", claim("common/hydra/launcher"))
def test_slurm_launcher_config(name):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_ROOT / "varsr"), version_base="1.3"):
        cfg = compose("sample", overrides=[f"hydra/launcher={name}", "lr_dir=/x"], return_hydra_config=True)
    assert "submitit" in cfg.hydra.launcher._target_ and cfg.hydra.launcher.gpus_per_node == 8


@pytest.mark.parametrize(
    "app,name", [("varsr", n) for n in claim("varsr/sweep")] + [("pure", n) for n in claim("pure/sweep")]
)
def test_optuna_sweep_presets(app, name):
    """+sweep=optuna selects Hydra's Optuna sweeper over cfg and temperature, maximising PSNR, and
    leaves the sampling config itself valid."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    schema = _register_sample_schema(app)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_ROOT / app), version_base="1.3"):
        cfg = compose("sample", overrides=[f"+sweep={name}", "lr_dir=/x"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.sweeper.direction == "maximize"
    assert set(cfg.hydra.sweeper.params) == {"cfg", "temperature"}
    assert cfg.hydra.callbacks.sweep_summary.objective == "psnr"
    assert "psnr" in cfg.metrics  # the objective is scored by default
    validate(schema, {k: v for k, v in cfg.items() if k != "hydra"})


def _register_sample_schema(app: str):
    if app == "varsr":
        from varsr.evaluate import SampleRunConfig as schema
        from varsr.evaluate import register_configs
    else:
        from pure.evaluate import PureSampleConfig as schema
        from pure.evaluate import register_configs
    register_configs()
    return schema


def test_every_config_file_is_checked():
    missing = [f for f in ALL_FILES if f not in CLAIMED]
    assert not missing, f"config files no test composes: {missing}"
    assert Path(CONFIG_ROOT).is_dir()
