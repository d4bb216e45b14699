"""Every command in README.md is exercised, classified by its shape.

The fenced ``bash`` blocks are split into commands (backslash continuations joined, comments
dropped). Then, by shape:

- ``make <target>``: the target exists (``make -n``).
- ``python data/<script>.py --flag ...`` (any script outside ``launch/``): it exists, and defines
  every flag used (``--help``).
- ``python launch/<launcher>.py overrides`` (also behind ``torchrun``; ``-m`` sweeps reduced to
  their first point): composed with Hydra and validated against the launcher's own schema and view,
  by calling the launcher with `run_app` swapped for a checker that stops before any work.
- Of those, the commands a CPU can run in seconds (sampling, degradation and PSNR/SSIM evaluation,
  not under torchrun or SLURM) run for real, on the tiny models, with the README's placeholders
  replaced: ``LR``/``HR``/``OUT*`` by small folders of the bundled photos, checkpoint files by
  ``null`` (seeded random tiny weights), plus the tiny-model overrides of `TINY`.

A README command of a new shape fails `test_every_command_is_classified` until this file knows it.
"""

import importlib.util
import inspect
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# launcher -> overrides that make it a seconds-long CPU run (tiny model, tiny images)
TINY = {
    "sample_varsr.py": ["model=tiny", "ckpt=null", "vae_ckpt=null", "device=cpu"],
    "sample_pure.py": [
        "model=tiny",
        "ckpt_dir=null",
        "vq_ckpt=null",
        "vq_size=tiny",
        "resolution=8",
        "image_only=true",
        "max_new_tokens=30",
        "device=cpu",
        "dtype=fp32",
        "out_size=96",
    ],  # 96 px: NIQE (the no-HR fallback) needs 96-px patches
    "degrade.py": ["device=cpu", "batch_size=2", "min_size=16"],
    "evaluate.py": ["device=cpu", "progress=false"],
}
CKPT_KEYS = ("ckpt", "vae_ckpt", "ckpt_dir", "vq_ckpt", "tokenizer")  # user weights -> null (random tiny)
CPU_METRICS = {"psnr", "ssim", "niqe"}  # need no weight files
SMALL = {"hydra.sweeper.n_trials": "2"}  # sweep sizes cut for the test


def readme_commands() -> list[tuple[int, list[str]]]:
    """(README line, argv) of every command in a ```bash block or in inline code."""
    text = README.read_text()
    out = []
    for m in re.finditer(r"^```bash\n(.*?)^```", text, re.S | re.M):
        first = text[: m.start(1)].count("\n") + 1
        pending, start = "", None
        for i, line in enumerate(m.group(1).splitlines()):
            start = first + i if start is None else start
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            argv = shlex.split(pending + line, comments=True)
            if argv:
                out.append((start, argv))
            pending, start = "", None
    fenced = re.sub(r"^```.*?^```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S | re.M)
    for m in re.finditer(r"`((?:python|torchrun|make) [^`]+)`", fenced):  # inline commands (tables, prose)
        argv = shlex.split(m.group(1))
        if argv[0] == "make" or any(a.endswith(".py") or a == "-m" for a in argv):  # not a bare option list
            out.append((text[: m.start()].count("\n") + 1, argv))
    return sorted(out)


COMMANDS = readme_commands()


def _ids():
    return [f"L{n}-{' '.join(a)[:50]}" for n, a in COMMANDS]


def split_launcher(argv: list[str]) -> tuple[bool, list[str]]:
    """(started by torchrun, ``[python, script, *args]``) with torchrun's own options removed."""
    if argv[0] == "torchrun":
        rest = argv[1:]
        while rest and rest[0].startswith("--"):
            rest = rest[1:]
        return True, ["python", *rest]
    return False, argv


def kind(argv: list[str]) -> str:
    if argv[0] == "make":
        return "make"
    _, argv = split_launcher(argv)
    if argv[0] == "python" and len(argv) > 1:
        if "*" in argv[1]:
            return "glob"
        if argv[1] == "-m":
            return "module"
        if argv[1].startswith("launch/"):
            return "launch"
        if argv[1].endswith(".py"):
            return "script"  # data preparation, benchmarks
    return "unknown"


def runnable(argv: list[str]) -> bool:
    """A launcher command a CPU runs in seconds with the tiny substitutions."""
    torchrun, argv = split_launcher(argv)
    script = Path(argv[1]).name
    if torchrun or script not in TINY or any(a.startswith("hydra/launcher=") for a in argv):
        return False
    metrics = [a.split("=", 1)[1] for a in argv if a.startswith("metrics=")]
    return all(set(m.strip("[]").split(",")) <= CPU_METRICS for m in metrics)


def test_every_command_is_classified():
    assert len(COMMANDS) > 20
    assert [" ".join(a) for _, a in COMMANDS if kind(a) == "unknown"] == []
    assert sum(runnable(a) for _, a in COMMANDS) >= 6  # the sampling/evaluation/degradation commands


@pytest.mark.parametrize("argv", [a for _, a in COMMANDS if kind(a) == "make"])
def test_make_targets_exist(argv):
    r = subprocess.run(["make", "-n", *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow  # one interpreter start per script
@pytest.mark.parametrize("argv", [a for _, a in COMMANDS if kind(a) == "script"])
def test_scripts_exist_and_take_the_flags(argv):
    """Data-preparation and benchmark scripts: they exist; the options used are in their --help."""
    script = ROOT / split_launcher(argv)[1][1]
    assert script.is_file()
    if not any(a.startswith("--") for a in argv):
        return  # nothing more to check without running it (a benchmark runs for minutes)
    r = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    for flag in [a.split("=", 1)[0] for a in argv if a.startswith("--")]:
        assert flag in r.stdout, f"{script.name} has no {flag} option"


@pytest.mark.parametrize("argv", [a for _, a in COMMANDS if kind(a) == "glob"])
def test_script_patterns_match_scripts(argv):
    """``python launch/train_*.py ...`` in prose: the pattern names existing launchers."""
    assert sorted(ROOT.glob(split_launcher(argv)[1][1]))


@pytest.mark.parametrize("argv", [a for _, a in COMMANDS if kind(a) == "module"])
def test_module_commands_exist(argv):
    """``python -m pkg.mod [sub ...]``: the module exists (and has that sub-command, when one is given)."""
    spec = importlib.util.find_spec(argv[2])
    assert spec is not None and spec.origin, f"no module {argv[2]}"
    if len(argv) > 3:
        assert f'"{argv[3]}"' in Path(spec.origin).read_text(), f"{argv[2]} has no {argv[3]} command"


# ------------------------------------------------------------------------ compose + validate
def _overrides(args: list[str]) -> list[str]:
    """The single-run overrides of a (possibly multirun) command: each sweep at its first value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    plain = [a for a in args if a not in ("-m", "--multirun")]
    out = []
    for text, ov in zip(plain, OverridesParser.create().parse_overrides(plain), strict=True):
        if ov.is_sweep_override():
            first = next(iter(ov.sweep_string_iterator()))
            text = f"{text.split('=', 1)[0]}={first}"
        out.append(text)
    return out


def _load_launcher(script: Path):
    spec = importlib.util.spec_from_file_location(f"readme_{script.stem}", script)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses defined in the launcher look their module up here
    spec.loader.exec_module(mod)
    return mod


def check_composes(script: Path, overrides: list[str], job_dir: Path) -> str:
    """Compose + validate ``overrides`` exactly as the launcher would, without running it.

    Hydra's own node is installed as in a job (output dir ``job_dir``), so ``${hydra:...}`` values resolve."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from common.config import compose_config

    def compose(app, name, argv):
        cfg = compose_config(app, name, list(argv), hydra_node=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(job_dir)
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        return cfg

    try:
        return _check(script, overrides, compose)
    finally:
        HydraConfig.instance().cfg = None  # as outside any job again


def _check(script: Path, overrides: list[str], compose) -> str:
    from common.config import split_hydra, to_dataclass, validate

    source = script.read_text()
    mod = _load_launcher(script)  # its imports register the schemas its configs name
    if "run_app(" not in source:  # a launcher composing by itself: compose its config
        app, name = re.search(r'compose_config\("(\w+)", "(\w+)"', source).groups()
        compose(app, name, overrides)
        return f"{app}/{name}"
    seen = []

    def checker(app, config_name, schema, fn, argv=None, typed=True, spawn_script=None, view=None, dry_run=None):
        cfg, hc = split_hydra(compose(app, config_name, argv))
        (to_dataclass if typed else validate)(schema, cfg if view is None else view(cfg, hc))
        seen.append(f"{app}/{config_name}")
        return {}

    mod.run_app = checker
    entry = next(
        f
        for name, f in inspect.getmembers(mod, inspect.isfunction)
        if f.__module__ == mod.__name__ and "run_app(" in inspect.getsource(f)
    )
    entry(overrides)
    assert seen, f"{script.name}: the entry point did not reach run_app"
    return seen[0]


@pytest.fixture(scope="module")
def photo_sets(tmp_path_factory):
    """LR (24 px) / HR (96 px) folders of a bundled photo, and two SR folders of HR's size."""
    from PIL import Image

    from common.data.bundled import bundled_pairs

    root = tmp_path_factory.mktemp("readme_sets")
    for sub in ("LR", "HR", "OUT_A", "OUT_B"):
        (root / sub).mkdir()
    for name, lr, hr in bundled_pairs(96)[:1]:
        Image.fromarray(lr).save(root / "LR" / f"{name}.png")
        Image.fromarray(hr).save(root / "HR" / f"{name}.png")
        up = Image.fromarray(lr)
        up.resize((96, 96), Image.BICUBIC).save(root / "OUT_A" / f"{name}.png")
        up.resize((96, 96), Image.NEAREST).save(root / "OUT_B" / f"{name}.png")
    return root


def substitute(argv: list[str], sets: Path, work: Path, tiny: bool) -> list[str]:
    """Folders -> the fixtures (README placeholders LR, HR, OUT, DIR); with ``tiny``: user checkpoints
    -> null, sweeps cut to two values per key and two Optuna trials."""
    out = []
    for a in argv:
        key, eq, value = a.partition("=")
        if eq and key in ("lr_dir", "hr_dir"):
            value = str(sets / key[:2].upper())
        elif eq and key == "out_dir":
            value = str(work / "out")  # a fresh folder: outputs never go into the fixtures
        elif eq and key == "sr_dir":  # OUT, or a sweep over OUT_A,OUT_B
            value = ",".join(str(sets / ("OUT_B" if v.endswith("_B") else "OUT_A")) for v in value.split(","))
        elif eq and tiny and key in CKPT_KEYS:
            value = "null"
        elif eq and tiny and key in SMALL:
            value = SMALL[key]
        elif eq and tiny and "," in value and not value.startswith(("[", "'", '"')):
            value = ",".join(value.split(",")[:2])  # a sweep: its first two values
        out.append(f"{key}={value}" if eq else a)
    return out


LAUNCH = [a for _, a in COMMANDS if kind(a) == "launch"]


@pytest.mark.parametrize("argv", LAUNCH, ids=[i for i, (_, a) in zip(_ids(), COMMANDS) if kind(a) == "launch"])
def test_launcher_command_composes_and_validates(argv, photo_sets, tmp_path):
    _, argv = split_launcher(argv)
    script = ROOT / argv[1]
    assert script.is_file(), f"{argv[1]} does not exist"
    check_composes(script, _overrides(substitute(argv[2:], photo_sets, tmp_path, tiny=False)), tmp_path / "job")


RUN = [a for a in LAUNCH if runnable(a)]


@pytest.mark.slow
@pytest.mark.parametrize("argv", RUN, ids=[" ".join(a)[:60] for a in RUN])
def test_cpu_command_runs_on_the_tiny_models(argv, photo_sets, tmp_path):
    _, argv = split_launcher(argv)
    script = Path(argv[1]).name
    args = substitute(argv[2:], photo_sets, tmp_path, tiny=True)
    given = {a.split("=", 1)[0] for a in args}
    args += [t for t in TINY[script] if t.split("=", 1)[0] not in given]
    multirun = "-m" in args
    args.append(f"hydra.sweep.dir={tmp_path / 'sweep'}" if multirun else f"hydra.run.dir={tmp_path / 'run'}")
    if script == "degrade.py":
        args = [a for a in args if not a.startswith("hydra.run.dir=")]  # its run dir is out_dir
    r = subprocess.run(
        [sys.executable, str(ROOT / "launch" / script), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, f"{' '.join(args)}\n{r.stderr[-3000:]}"
    if multirun:  # every README sweep ends with its summary table
        assert (tmp_path / "sweep" / "sweep_summary.csv").is_file()
