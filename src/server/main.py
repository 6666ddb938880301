"""`run_ui.py`: load the model once, then serve it with uvicorn."""

from __future__ import annotations

import gc
import sys

import torch

from src.device import resolve_device
from src.model.checkpoint import CheckpointError, load_for_inference
from src.server.guards import read_timeout_protocol
from src.server.settings import ServerSettings, parse_settings


def build_app(settings: ServerSettings):
    from src.server.app import create_app

    device = resolve_device(settings.device)
    if device.type == "cpu":
        torch.set_num_threads(settings.decode_threads())
    loaded = load_for_inference(settings.checkpoint, settings.device, settings.precision, settings.tokenizer)
    return create_app(loaded, settings), loaded


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(argv)
    try:
        app, loaded = build_app(settings)
    except (CheckpointError, ValueError) as exc:
        print(f"run_ui.py: error: {exc}", file=sys.stderr)
        return 2
    print(f"Serving {loaded.name} ({loaded.model.num_parameters():,} params) on "
          f"http://{settings.host}:{settings.port}  (API docs: /docs)", flush=True)
    # Everything loaded so far lives as long as the server: keep it out of the garbage
    # collector's scans, which otherwise stall streams now and then (seen as 100+ ms TTFT spikes).
    gc.collect()
    gc.freeze()
    # One access-log line per request costs the event loop ~6% of its time under a burst of
    # streams (profiled); --access-log turns it back on.
    serve(app, settings)
    return 0


def serve(app, settings: ServerSettings) -> None:
    """uvicorn, which tells the service when it is told to stop: open streams then end with
    their error event and [DONE] at once, within SHUTDOWN_GRACE_S, instead of holding it up."""
    import uvicorn

    from src.server.sse import SHUTDOWN_GRACE_S

    class StoryServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            app.state.service.stop()
            super().handle_exit(sig, frame)

    StoryServer(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info",
                               access_log=settings.access_log,
                               http=read_timeout_protocol(settings.read_timeout_s) or "auto",
                               timeout_graceful_shutdown=SHUTDOWN_GRACE_S)).run()
