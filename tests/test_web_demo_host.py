"""The web demo without a browser: what the page asks for reaches the model (stubs record it).

The real click handler (``webdemo.ui.make_handler``) and the real ``ModelHost`` run; only the weight
loaders and the samplers are replaced by stubs that record the config, the generator's seed and the
model object they received, and return an image whose value encodes the request. Bugs these catch:
a request's cfg / temperature / seed dropped or swapped on the way to the sampler, the generator
seeded from the base config instead of the request, a checkpoint switch that keeps serving the
previous model (or loads the wrong entry's file), and the page wiring its widgets to the handler's
parameters in another order. The browser test (tests/test_web_demo.py) drives the real models.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from common.data.io import read_image, write_image


@pytest.fixture
def stubs(tmp_path, monkeypatch):
    """Record loads and sampler calls of both apps; (host, handler, records, files)."""
    import pure.evaluate as pe
    import varsr.evaluate as ve
    from webdemo.host import ModelHost
    from webdemo.ui import make_handler

    rec = {"loads": [], "calls": []}
    files = {}
    for name in ("A", "B"):
        files[name] = tmp_path / f"varsr_{name}.pth"
        files[name].write_bytes(b"x")
        (tmp_path / f"pure_{name}").mkdir()

    def load_models(cfg, device):
        rec["loads"].append(("varsr", cfg.ckpt))
        return SimpleNamespace(ckpt=cfg.ckpt), object()

    def sr_one(model, vqvae, img, cfg, device, generator, on_scale=None):
        rec["calls"].append(
            dict(
                app="varsr",
                ckpt=model.ckpt,
                cfg=cfg.cfg,
                temperature=cfg.temperature,
                seed=generator.initial_seed(),
                tile=cfg.tile,
                color_fix=cfg.color_fix,
            )
        )
        h, w = img.shape[:2]
        return torch.full((1, 3, 4 * h, 4 * w), (generator.initial_seed() % 200) / 255)

    def load_components(cfg, device):
        rec["loads"].append(("pure", cfg.ckpt_dir))
        return SimpleNamespace(ckpt=cfg.ckpt_dir), object(), object()

    class StubRestorer:
        def __init__(self, cfg, model):
            self.cfg, self.model = cfg, model

        def restore(self, imgs, generator):
            c = self.cfg
            rec["calls"].append(
                dict(
                    app="pure",
                    ckpt=self.model.ckpt,
                    cfg=c.cfg,
                    temperature=c.temperature,
                    seed=generator.initial_seed(),
                    scale=c.scale,
                    color_fix=c.color_fix,
                )
            )
            h, w = imgs[0].shape[:2]
            image = torch.full((3, 4 * h, 4 * w), (generator.initial_seed() % 200) / 255)
            return [SimpleNamespace(image=image, degradation="d", caption="c", ok=True, new_tokens=1, forwards=1)]

    monkeypatch.setattr(ve, "load_models", load_models)
    monkeypatch.setattr(ve, "sr_one", sr_one)
    monkeypatch.setattr(pe, "load_components", load_components)
    monkeypatch.setattr(pe, "build_restorer", lambda cfg, model, vq, tok, log=None: StubRestorer(cfg, model))
    ckpts = {
        "varsr": {n: {"model": "tiny", "ckpt": str(files[n]), "vae_ckpt": "null", "cfg": 6.0} for n in "AB"},
        "pure": {
            n: {"model": "tiny", "ckpt_dir": str(tmp_path / f"pure_{n}"), "vq_ckpt": "null", "vq_size": "tiny"}
            for n in "AB"
        },
    }
    host = ModelHost(ckpts, device="cpu")
    upload = tmp_path / "in.png"
    write_image(upload, np.full((6, 5, 3), 90, np.uint8))
    out = tmp_path / "web_out"
    out.mkdir()
    handler = make_handler(host, out, max_bytes=1 << 20)
    return host, lambda *a: handler(*a, progress=None), rec, files, str(upload), tmp_path


def test_page_settings_reach_the_varsr_sampler(stubs):
    host, handle, rec, files, upload, _ = stubs
    # widget order of the page: app, checkpoint, upload, cfg, temperature, seed, tile, colour fix
    (_, sr), path, _, _, info = handle("varsr", "B", upload, 3.5, 0.7, 41, "off", "wavelet")
    assert rec["loads"] == [("varsr", str(files["B"]))]
    assert rec["calls"] == [
        dict(app="varsr", ckpt=str(files["B"]), cfg=3.5, temperature=0.7, seed=41, tile="off", color_fix="wavelet")
    ]
    assert sr.shape == (24, 20, 3) and (sr == 41).all()  # the sampler's own output, not the bicubic
    assert (read_image(path) == 41).all()
    assert json.loads(info)["seed"] == 41 and json.loads(info)["checkpoint"] == "B"
    # another seed and cfg on the same checkpoint: no reload, the new values arrive
    handle("varsr", "B", upload, 9.0, 1.3, 7, "auto", "default")
    assert len(rec["loads"]) == 1
    assert rec["calls"][-1] == dict(
        app="varsr", ckpt=str(files["B"]), cfg=9.0, temperature=1.3, seed=7, tile="auto", color_fix="adain"
    )


def test_checkpoint_choice_switches_the_model(stubs):
    host, handle, rec, files, upload, tmp = stubs
    handle("varsr", "A", upload, 6.0, 1.0, 0, "auto", "default")
    handle("varsr", "B", upload, 6.0, 1.0, 0, "auto", "default")
    handle("pure", "B", upload, 0.8, 0.9, 5, "on", "none")
    handle("varsr", "A", upload, 6.0, 1.0, 0, "auto", "default")
    loads = [("varsr", str(files["A"])), ("varsr", str(files["B"])), ("pure", str(tmp / "pure_B"))]
    assert rec["loads"] == loads + [("varsr", str(files["A"]))]  # one model resident: A is loaded again
    assert [c["ckpt"] for c in rec["calls"]] == [p for _, p in loads] + [str(files["A"])]


def test_page_settings_reach_the_pure_restorer(stubs):
    host, handle, rec, _, upload, tmp = stubs
    (_, sr), *_ = handle("pure", "A", upload, 0.8, 0.6, 123, "off", "adain")
    assert rec["calls"][-1] == dict(
        app="pure", ckpt=str(tmp / "pure_A"), cfg=0.8, temperature=0.6, seed=123, scale=None, color_fix="adain"
    )
    assert (sr == 123).all()
    handle("pure", "A", upload, 1.5, 0.95, 9, "auto", "default")
    assert rec["calls"][-1] == dict(
        app="pure", ckpt=str(tmp / "pure_A"), cfg=1.5, temperature=0.95, seed=9, scale=4, color_fix="wavelet"
    )


def test_page_wires_each_widget_to_its_parameter(stubs):
    """The Restore button's inputs, by element id, in the handler's parameter order."""
    import inspect

    from webdemo.ui import build_ui, make_handler

    host, *_, tmp = stubs
    page = build_ui(host, 1.0, tmp / "web_out")
    by_id = {b["id"]: b.get("props", {}).get("elem_id") for b in page.config["components"]}
    runs = [d for d in page.config["dependencies"] if any(by_id.get(t[0]) == "run" for t in d["targets"])]
    assert len(runs) == 1
    wired = [by_id[i] for i in runs[0]["inputs"]]
    params = list(inspect.signature(make_handler(host, tmp, 1)).parameters)[: len(wired)]
    names = {"app": "app", "checkpoint": "checkpoint", "upload": "upload", "cfg": "cfg"}
    names |= {"temperature": "temperature", "seed": "seed", "tile": "tile", "color_fix": "color_fix"}
    assert wired == [names[p] for p in params] == list(names.values())


def test_browser_missing_skips_outside_ci_and_fails_under_ci(monkeypatch):
    import shutil as sh

    from tests.test_web_demo import require_browser

    def outcome():  # a skip must not pass for a failure (or the reverse): both are BaseExceptions
        with pytest.raises(BaseException) as e:
            require_browser()
        return e.type, str(e.value)

    monkeypatch.setattr(sh, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    kind, msg = outcome()
    assert kind is pytest.skip.Exception and "apt-get install chromium" in msg
    monkeypatch.setenv("CI", "true")
    kind, msg = outcome()
    assert kind is pytest.fail.Exception and "must run in CI" in msg and "apt-get install chromium" in msg
    monkeypatch.setattr(sh, "which", lambda name: "/usr/bin/chromium" if name == "chromium" else None)
    assert require_browser() == "/usr/bin/chromium"
