"""Full-size dry runs of every shipped configuration x device, as one Markdown table (no GPU needed).

    python bench/dry_run.py                 # every row below (minutes on 2 cores)
    python bench/dry_run.py --only pure     # rows whose name contains "pure"
    python bench/dry_run.py --details       # also each run's full report (memory categories, collectives)

Each row is what ``python launch/<app>.py <overrides> dry_run=<device> nproc=<world>`` computes
(common/dry_run.py: the real model and wrapping on fake tensors over a fake process group): the
peak per GPU (tracked peak + allocator slack + CUDA context), then per device whether it fits and
the roofline step time (training: one optimizer step; sampling: one decode step for PURE, one
whole image batch for VARSR). Memory does not depend on the device; one simulation serves every
column. ``wall`` is how long the simulation took on this machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.config import compose_config, to_dataclass  # noqa: E402
from common.devices import DEVICES  # noqa: E402
from common.dry_run_report import GIB  # noqa: E402
from common.logging import report_table  # noqa: E402

TRAIN_DEVICES = ("h100", "h200", "a100_80", "a100_40")
SAMPLE_DEVICES = ("h100", "h200", "a100_80", "a100_40", "rtx4090")


def _pure_train(overrides):
    from pure.config import PureTrainConfig

    return to_dataclass(PureTrainConfig, compose_config("pure", "train", overrides))


def _pure_sample(overrides):
    from pure.evaluate import PureSampleConfig

    cfg = compose_config("pure", "sample", ["lr_dir=LR", *overrides])
    return to_dataclass(PureSampleConfig, cfg)


def _varsr_train(overrides):
    from varsr.config import VARSRTrainConfig

    return to_dataclass(VARSRTrainConfig, compose_config("varsr", "train", overrides))


def _varsr_sample(overrides):
    from varsr.evaluate import SampleRunConfig, register_configs

    register_configs()  # configs/varsr/sample.yaml names its schema

    return to_dataclass(SampleRunConfig, compose_config("varsr", "sample", ["lr_dir=LR", *overrides]))


def rows():
    """(name, world, config builder, overrides, simulate, extra kwargs, devices)."""
    import pure.dry_run as pd
    import varsr.dry_run as vd

    ffhq = ["+exp=lsdir_ffhq"]
    return [
        ("PURE 7B train, FSDP2", 8, _pure_train, ffhq, pd.simulate_train, {}, TRAIN_DEVICES),
        ("PURE 7B train, ZeRO-3", 8, _pure_train, ["+exp=[lsdir_ffhq,zero3]"], pd.simulate_train, {}, TRAIN_DEVICES),
        (
            "PURE 7B train, FSDP2 + CPU offload",
            1,
            _pure_train,
            [*ffhq, "parallel.cpu_offload=true"],
            pd.simulate_train,
            {},
            TRAIN_DEVICES,
        ),
        ("PURE 7B sampling (sample.yaml), batch 1", 1, _pure_sample, [], pd.simulate_sample, {}, SAMPLE_DEVICES),
        ("VARSR d24 train, DDP", 8, _varsr_train, ffhq, vd.simulate_train, {}, TRAIN_DEVICES),
        (
            "VARSR d24 train, FSDP2",
            8,
            _varsr_train,
            [*ffhq, "parallel.backend=fsdp2"],
            vd.simulate_train,
            {},
            TRAIN_DEVICES,
        ),
        ("VARSR d24 sampling, batch 1", 1, _varsr_sample, [], vd.simulate_sample, {"batch": 1}, SAMPLE_DEVICES),
        ("VARSR d24 sampling, batch 16", 1, _varsr_sample, [], vd.simulate_sample, {"batch": 16}, SAMPLE_DEVICES),
    ]


def cell(report, key: str, devices) -> str:
    if key not in devices:
        return "-"
    r = dataclasses.replace(report, device=DEVICES[key])
    verdict = "fits" if r.fits else "**no**"
    unit = "step" if "train" in r.title.lower() else "call"
    return f"{verdict}, {r.step_s:.3g} s/{unit}"


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="run the rows whose name contains this (case-insensitive)")
    ap.add_argument("--details", action="store_true", help="print every run's full report too")
    args = ap.parse_args(argv)
    table = []
    for name, world, build, overrides, simulate, kw, devices in rows():
        if args.only.lower() not in name.lower():
            continue
        cfg = build(overrides)
        t0 = time.perf_counter()
        try:
            report = simulate(cfg, DEVICES["h100"], world, **kw)[0]
        except Exception as e:  # one failing row must not lose the others
            table.append({"configuration": name, "GPUs": world, "GiB per GPU": f"error: {type(e).__name__}: {e}"})
            print(f"{name}: error {e!r}", file=sys.stderr, flush=True)
            continue
        wall = time.perf_counter() - t0
        if args.details:
            print(report.markdown() + "\n", flush=True)
        host = sum(report.m.host_bytes.values()) + max(report.host.values(), default=0)
        row = {"configuration": name, "GPUs": world, "GiB per GPU": f"{report.needed / GIB:.1f}"}
        row.update({DEVICES[k].name: cell(report, k, devices) for k in SAMPLE_DEVICES})
        row.update({"host GiB (largest)": f"{host / GIB:.0f}", "wall s": f"{wall:.0f}"})
        table.append(row)
        print(f"{name}: {report.line()} ({wall:.0f} s)", file=sys.stderr, flush=True)
    report_table(table, title="Dry runs: peak memory per GPU and roofline time, by device (fake tensors, no GPU)")
    return table


if __name__ == "__main__":
    main()
