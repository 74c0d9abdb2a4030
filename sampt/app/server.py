"""The FastAPI application of ``sampt app`` (``create_app``) and the command (``main``).

Routes (all JSON unless said; errors are ``{"error": message}`` with a 4xx/5xx status):

* ``GET /`` the page; ``GET /static/...`` its script and style.
* ``POST /api/sessions`` a new session on the server's clip (one per browser tab).
* ``GET /api/sessions/{id}`` the state: clip, objects, undo/redo, which frames are up to date,
  the propagation's progress, the last call's report.
* ``GET .../frames/{t}.jpg`` a frame; ``GET .../masks/{t}.png`` its masks (RGBA: palette colours,
  clear background; 202 while a running propagation has not reached it); ``GET .../points/{t}``.
* ``POST .../objects``, ``DELETE .../objects/{object_id}``, ``POST .../points``
  (``{object_id, frame, x, y, positive}``), ``POST .../points/{point_id}/remove`` (``{frame}``),
  ``POST .../undo``, ``POST .../redo`` (``{frame}``: the frame shown, decoded at once).
* ``POST .../propagate``, ``POST .../cancel``.
* ``POST .../upload`` (multipart ``file``: a frames zip or a video), ``POST .../export`` (writes
  and zips every export; ``GET .../exports/{n}.zip``), ``GET .../session.json`` (save),
  ``POST .../session`` (multipart ``file``: reopen a saved session).
"""
import argparse
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

STATIC = Path(__file__).resolve().parent / "static"


def create_app(manager):
    """The FastAPI app over a ``SessionManager``."""
    from fastapi import Body, FastAPI, File, Request, UploadFile
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles

    from sampt.app.clip import ClipError, UploadTooLarge, read_limited
    from sampt.app.sessions import AppError

    app = FastAPI(title="sampt app", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.manager = manager

    @app.exception_handler(AppError)
    async def _app_error(request: Request, error: AppError):
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(ClipError)
    async def _clip_error(request: Request, error: ClipError):
        return JSONResponse({"error": str(error)}, status_code=413 if isinstance(error, UploadTooLarge) else 400)

    @app.exception_handler(Exception)
    async def _any_error(request: Request, error: Exception):
        # A bug must still reach the page as a message, never a bare 500 page.
        return JSONResponse({"error": f"internal error ({type(error).__name__}: {error}); the points are kept"},
                            status_code=500)

    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, error: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in error.errors())
        return JSONResponse({"error": f"bad request: {problems}"}, status_code=422)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/")
    def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.post("/api/sessions")
    def new_session():
        return manager.create().state()

    @app.get("/api/sessions/{sid}")
    def state(sid: str):
        return manager.get(sid).state()

    @app.get("/api/sessions/{sid}/frames/{t}.jpg")
    def frame(sid: str, t: int):
        return Response(manager.get(sid).frame_jpeg(t), media_type="image/jpeg",
                        headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/sessions/{sid}/masks/{t}.png")
    def mask(sid: str, t: int):
        png = manager.get(sid).mask_png(t)
        if png is None:
            return JSONResponse({"pending": True}, status_code=202)
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/api/sessions/{sid}/points/{t}")
    def points(sid: str, t: int):
        return {"frame": t, "points": manager.get(sid).points(t)}

    @app.post("/api/sessions/{sid}/objects")
    def add_object(sid: str):
        return manager.get(sid).add_object()

    @app.delete("/api/sessions/{sid}/objects/{object_id}")
    def remove_object(sid: str, object_id: int):
        return manager.get(sid).remove_object(object_id)

    @app.post("/api/sessions/{sid}/points")
    def add_point(sid: str, object_id: int = Body(...), frame: int = Body(...), x: float = Body(...),
                  y: float = Body(...), positive: bool = Body(True)):
        return manager.get(sid).add_point(object_id, frame, x, y, positive)

    @app.post("/api/sessions/{sid}/points/{point_id}/remove")
    def remove_point(sid: str, point_id: int, frame: int = Body(..., embed=True)):
        return manager.get(sid).remove_point(point_id, frame)

    @app.post("/api/sessions/{sid}/undo")
    def undo(sid: str, frame: int = Body(0, embed=True)):
        return manager.get(sid).undo(frame)

    @app.post("/api/sessions/{sid}/redo")
    def redo(sid: str, frame: int = Body(0, embed=True)):
        return manager.get(sid).redo(frame)

    @app.post("/api/sessions/{sid}/propagate")
    def propagate(sid: str):
        return manager.get(sid).start_propagation()

    @app.post("/api/sessions/{sid}/cancel")
    def cancel(sid: str):
        return manager.get(sid).cancel()

    @app.post("/api/sessions/{sid}/upload")
    def upload(sid: str, file: UploadFile = File(...)):
        session = manager.get(sid)
        from sampt.app.clip import check_upload_name

        check_upload_name(file.filename)  # before reading a byte of it
        data = read_limited(file.file, session.limits)
        return session.open_upload(file.filename, data)

    @app.post("/api/sessions/{sid}/export")
    def export(sid: str):
        return manager.get(sid).export()

    @app.get("/api/sessions/{sid}/exports/{number}.zip")
    def export_zip(sid: str, number: int):
        session = manager.get(sid)
        path = session.folder / "exports" / f"{number:03d}.zip"
        if number < 1 or not path.is_file():
            raise AppError(f"no export {number} in this session", 404)
        return FileResponse(path, media_type="application/zip",
                            filename=f"{session.clip.name}_export_{number}.zip")

    @app.get("/api/sessions/{sid}/session.json")
    def save_session(sid: str):
        import json

        session = manager.get(sid)
        return Response(json.dumps(session.session_json(), indent=1), media_type="application/json",
                        headers={"Content-Disposition": f'attachment; filename="{session.clip.name}_session.json"'})

    @app.post("/api/sessions/{sid}/session")
    def open_session(sid: str, file: UploadFile = File(...)):
        session = manager.get(sid)
        data = read_limited(file.file, session.limits)
        return session.open_session(data, manager.known_clip)

    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sampt app",
        description="A local web page over SAM-PT's interaction engine: click points on a clip, propagate, "
                    "correct, export. Prints the address to open; opens nothing by itself.")
    parser.add_argument("--config", action="append", default=[], metavar="YAML",
                        help="a sampt run config (repeat to stack): the clip is data.init_args.frames, the model "
                             "model.init_args.method (SAM, tracker, SAM-PT options). Default: configs/demo.yaml")
    parser.add_argument("--video", default=None, help="a frames folder or a video file (overrides the config's)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: a free one; default 8000)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--workdir", default=None,
                        help="folder for uploads and exports (default: a new temporary folder)")
    parser.add_argument("--max-upload-mib", type=float, default=200.0, help="largest upload (default 200 MiB)")
    parser.add_argument("--max-frames", type=int, default=300, help="most frames per clip (default 300)")
    parser.add_argument("--max-side", type=int, default=1280,
                        help="frames with a longer side are scaled down to it (default 1280 px)")
    return parser


class Server:
    """The app on uvicorn, in the calling thread (``run``) or a background thread (``start``)."""

    def __init__(self, app, host: str, port: int):
        import socket

        import uvicorn

        self.socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((host, port))
        except OSError as error:
            from sampt.app.sessions import AppError

            raise AppError(f"cannot listen on {host}:{port}: {error}") from error
        self.host, self.port = host, self.socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False)
        self.uvicorn = uvicorn.Server(config)
        self.thread = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def run(self) -> None:
        self.uvicorn.run(sockets=[self.socket])

    def start(self) -> "Server":
        import threading
        import time

        self.thread = threading.Thread(target=self.run, name="sampt-app-server", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.uvicorn.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the app server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        if self.thread is not None:
            self.thread.join(10)


def make_manager(configs: Sequence[str], video: Optional[str] = None, device: Optional[str] = None,
                 workdir: Optional[str] = None, limits=None):
    """Read the config, build the models, and check the clip opens: a ``SessionManager``."""
    import torch

    from sampt.app.clip import Limits
    from sampt.app.config import DEFAULT_CLIP, build_method, read_app_config
    from sampt.app.sessions import SessionManager

    limits = limits or Limits()
    config = read_app_config(configs, video)
    clip = config.clip if config.clip is not None else DEFAULT_CLIP
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    models = build_method(config.method, device)
    folder = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="sampt-app-"))
    folder.mkdir(parents=True, exist_ok=True)
    manager = SessionManager(folder, limits, models, clip)
    manager.initial_clip()  # an unreadable clip fails now, with its message, not in the page
    return manager


def main(argv: Optional[Sequence[str]] = None) -> int:
    from sampt.app.clip import Limits

    args = build_parser().parse_args(argv)
    for name in ("max_upload_mib", "max_frames", "max_side"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"sampt app: error: --{name.replace('_', '-')} must be positive")
    if not 0 <= args.port < 65536:
        raise SystemExit("sampt app: error: --port must be in 0..65535")
    configs = args.config or [str(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml")]
    limits = Limits(args.max_upload_mib, args.max_frames, args.max_side)
    manager = make_manager(configs, args.video, args.device, args.workdir, limits)
    server = Server(create_app(manager), args.host, args.port)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"sampt app: warning: listening on {args.host}: anyone who can reach this machine can use the page, "
              "upload files and run the model. There is no login; use --host only on a network you trust.",
              file=sys.stderr)
    print(f"sampt app: {server.url}  (clip {manager.clip_path}; files under {manager.workdir}; Ctrl+C stops)",
          flush=True)
    try:
        server.run()
    finally:
        manager.close()
    return 0
