"""`livesight serve`: the flags, the checks before anything loads, and the server's life.

Loopback by default. Binding any other address needs --token-file (every route but /healthz then asks
for `Authorization: Bearer TOKEN`). One engine (one model, one GPU) serves every stream; the server's
engine flags are every stream's defaults and size its cache slabs (--max-streams of them).
"""

import argparse
import contextlib
import os
import threading

from livesight import scratch
from livesight.app.source_policy import SourcePolicy, is_loopback_host
from livesight.errors import InputError
from livesight.streaming.options import Bound, add_engine_args

UI_PATH = "/ui"
UI_UPLOAD = "500mb"  # the largest video a page may upload

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind; any but loopback needs --token-file (default %(default)s)")
    p.add_argument("--port", type=Bound(int, 1, 65535), default=8000, help="port (default %(default)s)")
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help="a file holding the bearer token every route but /healthz then requires")
    p.add_argument("--media-root", default=None, metavar="DIR",
                   help="the folder whose files clients may name as sources (default: no files)")
    p.add_argument("--max-streams", type=Bound(int, 1, 1024), default=4,
                   help="streams the server holds at once, each a slab of cache reserved at start-up "
                        "(default %(default)s)")
    p.add_argument("--replicas", type=Bound(int, 0, 1024), default=0,
                   help="engine replicas on Ray Serve, one GPU each, behind this server's API (default 0: one "
                        "engine in this process)")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="an existing Ray cluster to run the replicas on (default: a local one)")
    p.add_argument("--no-ui", action="store_true",
                   help=f"do not mount the web UI at {UI_PATH} (it is mounted only without --token-file: a "
                        f"browser page cannot send the token)")
    add_engine_args(p, offload_dir=False)  # streams spill into the server's own folder


def read_token(path: str | None, host: str) -> str | None:
    """The bearer token, or None on loopback without --token-file; InputError when an exposed bind has no
    token, or the file is missing, empty or readable by others."""
    if path is None:
        if not is_loopback_host(host):
            raise InputError(f"--host {host} serves beyond this machine: give --token-file FILE (a file holding a "
                             f"secret token clients send as Authorization: Bearer TOKEN)")
        return None
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as err:
        raise InputError(f"--token-file {path}: cannot read it ({err.strerror})") from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise InputError(f"--token-file {path}: the token must be one word of at least 16 characters")
    if os.name == "posix" and os.stat(path).st_mode & 0o077:
        raise InputError(f"--token-file {path} is readable by other users: chmod 600 {path}")
    return token


def make_streams(engine, server: dict, host: str, media_root: str | None, folder: str, metrics):
    """The streams an API serves from `engine` (serve/streams.py), sources checked for a server bound to `host`."""
    from livesight.serve.sources import SourceCheck
    from livesight.serve.streams import ApiStreams
    return ApiStreams(engine, server, SourceCheck(SourcePolicy.for_host(None, host), media_root), folder, metrics)


def make_app(engine, server: dict, token: str | None, host: str, media_root: str | None, folder: str,
             ready, page: "tuple[str, str, str] | None" = None) -> tuple:
    """The API over `engine` -> (the ASGI app, its ApiStreams, the page's RunRegistry or None). server: the
    engine flags by dest, every stream's defaults; folder: where streams keep transcripts; ready: whether
    the engine is stepping; page: (Gradio's upload folder, the page's export folder, the model's name) to
    mount the web UI at /ui, a client of the same engine (Gradio must be imported after its folder is set)."""
    from livesight.serve.app import MAX_BODY_BYTES, BodyLimit, build_app
    from livesight.serve.metrics import ApiMetrics
    metrics = ApiMetrics()
    streams = make_streams(engine, server, host, media_root, folder, metrics)
    app, registry = build_app(streams, metrics, token, ready), None
    if page is not None:
        import gradio as gr

        from livesight.app.registry import RunRegistry
        from livesight.app.web import IDLE_TIMEOUT_S
        from livesight.app.web_handlers import PageHandlers
        from livesight.app.web_page import CSS, build
        registry = RunRegistry(engine.pool.num_slabs, IDLE_TIMEOUT_S)
        policy = SourcePolicy.for_host(None, host)
        demo = build(PageHandlers(engine, registry, policy, page[0], page[1], server), page[2])
        demo.queue(default_concurrency_limit=8)
        app = gr.mount_gradio_app(app, demo, path=UI_PATH, css=CSS, show_error=False, max_file_size=UI_UPLOAD)
        registry.reap_every(30.0)
    return BodyLimit(app, MAX_BODY_BYTES, exempt=UI_PATH), streams, registry


def main(args) -> int:
    token = read_token(args.token_file, args.host)
    if args.media_root is not None and not os.path.isdir(args.media_root):
        raise InputError(f"--media-root {args.media_root} is not a folder")
    folder = scratch.make("serve")
    try:
        return _serve(args, token, folder)
    finally:
        scratch.remove(folder)


def _serve_cluster(args, token: str | None, folder: str) -> int:
    """The API here, the engines in Ray Serve replicas (serve/cluster.py)."""
    try:
        import ray
    except ImportError:
        raise InputError("--replicas and --ray-address need Ray Serve: pip install 'livesight[cluster]'") from None

    from livesight.app.web_inputs import server_values
    from livesight.serve.app import MAX_BODY_BYTES, BodyLimit, build_app
    from livesight.serve.cluster import ClusterStreams, Replicas
    from livesight.serve.metrics import ApiMetrics
    offload_dir = os.path.join(folder, "offload")
    os.mkdir(offload_dir)
    server = server_values(vars(args), offload_dir)
    ray.init(address=args.ray_address, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             ignore_reinit_error=True)
    # a replica sees its one GPU as cuda (Ray sets what it may see); auto: GPUs if the cluster has any
    cpu = args.device == "cpu" or (args.device == "auto" and not ray.cluster_resources().get("GPU"))
    replicas = Replicas(max(1, args.replicas), (args.model, "cpu" if cpu else "cuda", server, args.max_streams,
                                                 args.host, args.media_root), 0 if cpu else 1)
    metrics = ApiMetrics()
    streams = ClusterStreams(replicas, metrics)
    app = BodyLimit(build_app(streams, metrics, token, streams.ready), MAX_BODY_BYTES)
    try:
        _run(app, args, streams, token, False)
    finally:
        streams.close_all()
        replicas.shutdown()
    return 0


def _serve(args, token: str | None, folder: str) -> int:
    if args.replicas or args.ray_address:
        return _serve_cluster(args, token, folder)
    from livesight.app.web import gradio_temp_dir
    from livesight.app.web_inputs import server_values
    from livesight.models.registry import load_adapter
    from livesight.streaming.engine import Engine
    from livesight.streaming.options import build_config, resolve_device
    offload_dir, runs_dir = os.path.join(folder, "offload"), os.path.join(folder, "runs")
    os.mkdir(offload_dir)
    os.mkdir(runs_dir)
    server = server_values(vars(args), offload_dir)
    engine = Engine(load_adapter(args.model, resolve_device(args.device)), build_config(server), args.max_streams)
    stop = threading.Event()
    stepping = threading.Thread(target=engine.run, args=(stop,), name="livesight-engine", daemon=True)
    stepping.start()
    page = None if token or args.no_ui else (os.path.join(folder, "gradio"), os.path.join(folder, "exports"),
                                             args.model)
    with gradio_temp_dir(page[0]) if page else contextlib.nullcontext():
        app, streams, registry = make_app(engine, server, token, args.host, args.media_root, runs_dir,
                                          stepping.is_alive, page)
        try:
            _run(app, args, streams, token, page is not None)
        finally:
            if registry is not None:
                registry.close_all()
            streams.close_all()
            stop.set()
            stepping.join()
    return 0


def _run(app, args, streams, token: str | None, ui: bool) -> None:
    """uvicorn until Ctrl-C or SIGTERM."""
    import uvicorn
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)
    print(f"livesight serve: http://{args.host}:{args.port} ({args.model}, {streams.capacity} streams at most; "
          f"{'token required' if token else 'no token: loopback only'}; API docs at /docs"
          f"{'; web UI at ' + UI_PATH if ui else ''})", flush=True)
    server = uvicorn.Server(config)
    try:
        server.run()
    except SystemExit:
        if server.started:
            raise  # SIGTERM once serving (uvicorn shut down, then raised it again): the server ends as asked
        # else uvicorn could not bind
    if not server.started:
        raise InputError(f"cannot serve on {args.host}:{args.port}: is the port in use? Pick another with --port")
