"""`livesight web`: watch, narrate and ask in a browser (Gradio Blocks, thin over LiveRun).

Every browser tab gets its own run (keyed by Gradio's session hash), so transcripts never mix. Each
run is a stream of one engine, built at start-up from the server's flags with --max-streams slabs of
cache: every step serves all the streams that have work, in one batched pass (one model, one GPU).
Everything the server writes (uploads, Gradio's cache, exported transcripts, the sessions' spilled
cache blocks) lies in one folder of its own, made by livesight.scratch and removed when it stops.
This module is light: the parser's flags and the server's start; Gradio is imported only once the
server's folder is set.
"""

import argparse
import contextlib
import os
import threading

from livesight import scratch
from livesight.app.source_policy import KINDS, SourcePolicy, is_loopback_host, parse_allowed
from livesight.errors import InputError
from livesight.streaming.options import Bound, add_engine_args

IDLE_TIMEOUT_S = 600.0


def allowed_sources(text: str) -> frozenset[str] | None:
    try:
        return parse_allowed(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `livesight web` (no Gradio or torch import: building the parser stays fast). The
    engine's flags are every stream's defaults and size its cache; a page may choose less, not more."""
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind; 0.0.0.0 serves the network, see --allow-sources (default %(default)s)")
    p.add_argument("--port", type=Bound(int, 1, 65535), default=7860, help="port to serve (default %(default)s)")
    p.add_argument("--share", action="store_true",
                   help="also open a public Gradio share link, reachable by anyone who has it (default off)")
    p.add_argument("--max-streams", type=Bound(int, 1, 1024), default=2,
                   help="streams the engine holds, each a slab of cache reserved at start-up, and so the most "
                        "running at once; a visitor past that is told the server is busy. An ended stream keeps "
                        "answering questions until a new one needs its slab (default %(default)s)")
    p.add_argument("--max-upload-mb", type=Bound(int, 1, 1_000_000), default=500,
                   help="largest video upload accepted, in MB (default %(default)s)")
    p.add_argument("--idle-timeout", type=Bound(float, 0.0, 7 * 86400.0, low_open=True), default=IDLE_TIMEOUT_S,
                   metavar="SECONDS",
                   help="close a stream no page has used (refreshed, asked, sent a frame) for this long, "
                        "freeing its slot and memory (default %(default)g)")
    p.add_argument("--allow-sources", type=allowed_sources, default=None, metavar="KINDS",
                   help=f"sources a visitor may make the server open: auto, all, or a comma list of "
                        f"{', '.join(KINDS)}. auto (the default) is all on a loopback --host, and "
                        f"upload,webcam,urls beyond it (urls: rtsp/http(s) hosts with public addresses only)")
    add_engine_args(p, offload_dir=False)  # streams spill into the server's own folder
    p.set_defaults(model="toy-vlm")  # trained on the synthetic world, the page's first source


@contextlib.contextmanager
def gradio_temp_dir(path: str):
    """Gradio's uploads and cache go to `path` while the server runs.

    Gradio takes its folder from the GRADIO_TEMP_DIR environment variable only: when gradio is
    imported (route_utils.DEFAULT_TEMP_DIR, which the App also writes to when it is made), when each
    component is made (its cache) and at each request (the upload folder). So it is set here, before
    gradio is first imported, for as long as the server serves, and put back after."""
    before = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = path
    try:
        yield path
    finally:
        if before is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = before


def main(args) -> int:
    """Serve until Ctrl-C or SIGTERM; then every run is closed and the server's folder removed."""
    policy = SourcePolicy.for_host(args.allow_sources, args.host)
    folder = scratch.make("web")
    try:
        offload_dir = os.path.join(folder, "offload")
        os.mkdir(offload_dir)
        with gradio_temp_dir(os.path.join(folder, "gradio")) as upload_dir:
            return serve(args, policy, upload_dir, os.path.join(folder, "exports"), offload_dir)
    finally:
        scratch.remove(folder)


def serve(args, policy: SourcePolicy, upload_dir: str, export_dir: str, offload_dir: str) -> int:
    from livesight.app.registry import RunRegistry
    from livesight.app.web_handlers import PageHandlers
    from livesight.app.web_inputs import server_values
    from livesight.app.web_page import CSS, build
    from livesight.models.registry import load_adapter
    from livesight.streaming.engine import Engine
    from livesight.streaming.options import build_config, resolve_device
    if args.share:
        print("livesight web: --share makes a public link: anyone with it can use this server", flush=True)
    if not is_loopback_host(args.host):
        print(f"livesight web: {args.host} is beyond loopback: anyone who reaches port {args.port} can use the page "
              f"and its HTTP API (there is no login; put a proxy that asks for one in front)", flush=True)
    print(f"livesight web: sources allowed: {policy.describe()} (--allow-sources)", flush=True)
    server = server_values(vars(args), offload_dir)
    config = build_config(server)
    engine = Engine(load_adapter(args.model, resolve_device(args.device)), config, args.max_streams)
    registry = RunRegistry(engine.pool.num_slabs, args.idle_timeout)
    demo = build(PageHandlers(engine, registry, policy, upload_dir, export_dir, server), args.model)
    demo.queue(default_concurrency_limit=8)
    stop = threading.Event()
    stepping = threading.Thread(target=engine.run, args=(stop,), name="livesight-engine", daemon=True)
    stepping.start()
    try:
        try:
            demo.launch(server_name=args.host, server_port=args.port, share=args.share, prevent_thread_lock=True,
                        max_file_size=f"{args.max_upload_mb}mb", css=CSS, quiet=False, show_error=False)
        except OSError as err:
            raise InputError(f"cannot serve on {args.host}:{args.port} ({err}): pick a free port with --port, "
                             f"or a local address with --host") from None
        registry.reap_every(min(30.0, max(0.5, args.idle_timeout / 10)))
        demo.block_thread()  # until Ctrl-C; SIGTERM, once the CLI turns it into SystemExit, leaves here too
    finally:
        demo.close()
        registry.close_all()
        stop.set()
        stepping.join()
    return 0
