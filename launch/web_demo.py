"""Web demo: try VARSR or PURE on your own image in the browser (Gradio, localhost by default).

    python launch/web_demo.py                        # the tiny `make demo` exports, http://127.0.0.1:7860
    python launch/web_demo.py port=8080 +varsr.official.model=d24 +varsr.official.ckpt=/w/VARSR.pth \
        +varsr.official.vae_ckpt=/w/VQVAE.pth

Schema and every key: webdemo/config.py; page and model host: webdemo/.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

from common.config import run_app  # noqa: E402
from webdemo.config import WebDemoConfig, register_configs  # noqa: E402


def main(cfg: WebDemoConfig, block: bool = True):
    from webdemo.host import ModelHost
    from webdemo.ui import serve

    host = ModelHost.from_config(cfg)
    return serve(
        host,
        server_name=cfg.host,
        port=cfg.port,
        max_upload_mb=cfg.max_upload_mb,
        queue_size=cfg.queue_size,
        block=block,
    )


def run(argv: list[str] | None = None):
    register_configs()
    return run_app("common", "web_demo", WebDemoConfig, main, argv)


if __name__ == "__main__":
    run()
