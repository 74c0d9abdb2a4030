"""Per-tab sessions of ``sampt app``: one ``InteractiveSession`` each, a lock around it and a worker
thread for propagation.

Every call that touches the engine holds the session's lock. Propagation runs on the session's
worker thread and holds the lock for its whole run; the masks of the frames it finishes are
rendered on that thread into a cache, so the page can show them while it runs. Interactions
during a propagation are refused (cancel first), never queued.
"""
from __future__ import annotations

import io
import json
import secrets
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

from sampt.app.clip import Clip, ClipError, Limits, read_clip, save_upload
from sampt.errors import SamptError

SESSION_FORMAT = "sampt-app-session"


class AppError(SamptError):
    """An error the page shows as a message (``status`` is the HTTP status)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _friendly(error: BaseException) -> AppError:
    """An engine / model failure as a message (points already placed are kept by the engine)."""
    import torch

    if isinstance(error, AppError):
        return error
    if isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError)) or "out of memory" in str(error).lower():
        return AppError("out of memory while computing the masks; the points are kept. Try a shorter or smaller "
                        "clip (the app scales frames down with --max-side).", 507)
    if isinstance(error, (ValueError, SamptError)):
        return AppError(str(error), 400)
    return AppError(f"{type(error).__name__}: {error}", 500)


class Job:
    """One propagation: progress, cancel flag, result."""

    def __init__(self, total: int):
        self.total = total
        self.done: list[int] = []
        self.cancel = threading.Event()
        self.thread: Optional[threading.Thread] = None
        self.report: Optional[dict] = None
        self.error: Optional[str] = None
        self.started = time.perf_counter()
        self.finished: Optional[float] = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def json(self) -> dict:
        return {"running": self.running, "done": len(self.done), "total": self.total,
                "cancel_requested": self.cancel.is_set(), "report": self.report, "error": self.error,
                "seconds": (self.finished or time.perf_counter()) - self.started}


def report_json(report: Any, extra_seconds: float = 0.0) -> dict:
    data = asdict(report)
    data["seconds"] = float(data["seconds"]) + extra_seconds
    return data


class AppSession:
    """One browser tab's session: a clip, an engine, pending (point-less) objects, a mask cache."""

    def __init__(self, session_id: str, folder: Path, clip: Clip, models: tuple, limits: Limits):
        self.id = session_id
        self.folder = folder
        self.limits = limits
        self.models = models
        self.lock = threading.RLock()
        self.job: Optional[Job] = None
        self.uploads = 0
        self.exports = 0
        self.last_report: Optional[dict] = None
        self._frame_jpegs: dict[int, bytes] = {}
        self._masks: dict[int, bytes] = {}
        self.version = 0
        self._open(clip)

    # -- clip and engine -------------------------------------------------------------------
    def _new_engine(self, clip: Clip):
        from sampt.methods.interactive import InteractiveSession

        sam, tracker, config = self.models
        return InteractiveSession(clip.frames, sam, tracker, config, frame_names=clip.frame_names, name=clip.name,
                                  eager=False)

    def _open(self, clip: Clip, engine=None) -> None:
        self.engine = engine if engine is not None else self._new_engine(clip)
        self.clip = clip
        self.pending: set[int] = set()
        self.next_object_id = max(self.engine.object_ids, default=0) + 1
        self._frame_jpegs = {}
        self.last_report = None
        self._changed()

    def _changed(self) -> None:
        self.version += 1
        self._masks = {}

    def _check_idle(self) -> None:
        if self.job is not None and self.job.running:
            raise AppError("propagation is running: wait for it or cancel it first", 409)

    @contextmanager
    def _exclusive(self):
        """The engine, for a call that changes or reads all of it: refused (409) at once while a
        propagation holds it, rather than waiting behind it; a short call ahead is waited for."""
        while not self.lock.acquire(timeout=0.05):
            self._check_idle()
        try:
            self._check_idle()
            yield
        finally:
            self.lock.release()

    def open_upload(self, filename: str, data: bytes) -> dict:
        with self._exclusive():
            self.uploads += 1
            folder = self.folder / "uploads" / f"{self.uploads:03d}"
            try:
                path = save_upload(filename, data, folder, self.limits)
                clip = read_clip(path, self.limits, name=Path(filename).stem)
            except Exception:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            self._open(clip)
            return self.state()

    # -- reading ---------------------------------------------------------------------------
    def objects(self) -> list[dict]:
        ids = sorted(set(self.engine.object_ids) | self.pending)
        from sampt.overlay import palette_table  # the overlays' colours (cv2 and torch: imported on use)

        out = []
        for object_id in ids:
            placed = object_id in self.engine.object_ids
            out.append({"id": object_id, "colour": [int(c) for c in palette_table()[object_id % 256]],
                        "first_frame": self.engine.first_frame(object_id) if placed else None,
                        "points": len(self.engine.points(object_id)) if placed else 0})
        return out

    def state(self) -> dict:
        engine = self.engine
        return {
            "session": self.id, "version": self.version,
            "clip": {"name": self.clip.name, "num_frames": engine.num_frames, "width": engine.width,
                     "height": engine.height, "frame_names": self.clip.frame_names},
            "objects": self.objects(),
            "can_undo": engine.can_undo, "can_redo": engine.can_redo,
            "up_to_date": [engine.is_up_to_date(t) for t in range(engine.num_frames)],
            "job": None if self.job is None else self.job.json(),
            "last_report": self.last_report,
            "limits": {"max_upload_mib": self.limits.max_upload_mib, "max_frames": self.limits.max_frames,
                       "max_side": self.limits.max_side, "text": self.limits.describe()},
        }

    def frame_jpeg(self, t: int) -> bytes:
        from PIL import Image

        t = self._frame_index(t)
        if t not in self._frame_jpegs:
            image = Image.fromarray(self.clip.frames[t].permute(1, 2, 0).numpy())
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=92)
            self._frame_jpegs[t] = buffer.getvalue()
        return self._frame_jpegs[t]

    def _frame_index(self, t: int) -> int:
        if not 0 <= t < self.engine.num_frames:
            raise AppError(f"frame {t} is out of range: the clip has frames 0..{self.engine.num_frames - 1}", 404)
        return t

    def _render_mask(self, t: int) -> bytes:
        """Frame ``t``'s masks as an RGBA PNG: each object in its palette colour, opaque; background clear."""
        import numpy as np
        from PIL import Image

        from sampt.io.png import davis_palette

        index = self.engine.index_mask(t).numpy()
        # One table lookup per pixel (this runs for every frame a propagation finishes).
        colours = np.asarray(davis_palette(), dtype=np.uint8).reshape(-1, 3)
        rgba = np.concatenate([colours[index], np.where(index > 0, 255, 0).astype(np.uint8)[..., None]], axis=-1)
        buffer = io.BytesIO()
        Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()

    def mask_png(self, t: int) -> Optional[bytes]:
        """Frame ``t``'s mask PNG; None while a propagation holds the engine and has not reached it."""
        t = self._frame_index(t)
        cached = self._masks.get(t)
        if cached is not None:
            return cached
        if not self.lock.acquire(blocking=not (self.job is not None and self.job.running)):
            return None
        try:
            version = self.version
            png = self._render_mask(t)
            if version == self.version:
                self._masks[t] = png
            return png
        except Exception as error:
            raise _friendly(error) from error
        finally:
            self.lock.release()

    def points(self, t: int) -> list[dict]:
        """The points to draw on frame ``t``: where each tracked point is, visible (prompting SAM) or not."""
        import math

        t = self._frame_index(t)
        engine = self.engine
        state = engine._state  # immutable snapshot: safe to read while a propagation runs
        out = []
        for tracked in state.points.values():
            point = tracked.point
            x, y = (float(v) for v in tracked.trajectory[t])
            if math.isnan(x) or math.isnan(y):
                continue
            visible = bool(tracked.visibility(state.objects[point.object_id])[t])
            if not visible and t < point.frame and not point.backward:
                continue  # not tracked back here
            removed = point.removed_from is not None and t >= point.removed_from
            out.append({"id": point.point_id, "object": point.object_id, "x": x, "y": y, "positive": point.positive,
                        "visible": visible, "removed": removed, "own_frame": point.frame == t})
        return out

    # -- interactions ----------------------------------------------------------------------
    def _interact(self, frame: int, call: Callable[[], Any]) -> dict:
        with self._exclusive():
            tic = time.perf_counter()
            try:
                report = call()
            except Exception as error:
                raise _friendly(error) from error
            self._changed()
            extra = 0.0
            if report is not None and 0 <= frame < self.engine.num_frames:
                # Lazy engine: a click costs this frame's decode; Propagate does the others.
                before = asdict(self.engine.on_demand)
                start = time.perf_counter()
                try:
                    self._masks[frame] = self._render_mask(frame)
                except Exception as error:
                    raise _friendly(error) from error
                extra = time.perf_counter() - start
                after = asdict(self.engine.on_demand)
                for key in ("decoder_seconds", "encoder_seconds", "prompts_decoded", "decoder_calls",
                            "frames_encoded", "embedding_cache_hits"):
                    setattr(report, key, getattr(report, key) + after[key] - before[key])
            if report is not None:
                self.last_report = report_json(report, extra)
                self.last_report["wall_seconds"] = time.perf_counter() - tic
            return self.state()

    def add_object(self) -> dict:
        with self._exclusive():
            if self.next_object_id > 255:
                raise AppError("at most 255 objects per clip (index masks are 8-bit)")
            object_id = self.next_object_id
            self.next_object_id += 1
            self.pending.add(object_id)
            state = self.state()
            state["new_object"] = object_id
            return state

    def remove_object(self, object_id: int) -> dict:
        with self._exclusive():
            if object_id in self.engine.object_ids:
                self.pending.discard(object_id)
                return self._interact(-1, lambda: self.engine.remove_object(object_id))
            if object_id in self.pending:
                self.pending.discard(object_id)
                return self.state()
            raise AppError(f"unknown object {object_id}", 404)

    def add_point(self, object_id: int, frame: int, x: float, y: float, positive: bool) -> dict:
        engine = self.engine
        self._frame_index(frame)
        if not (0 <= x < engine.width and 0 <= y < engine.height):
            raise AppError(f"point ({x:g}, {y:g}) is outside the frame ({engine.width}x{engine.height} pixels)")
        with self._exclusive():
            if object_id in engine.object_ids:
                first = engine.first_frame(object_id)
                if frame < first:
                    raise AppError(f"object {object_id} starts on frame {first} (its first point); add points on "
                                   f"frame {first} or later, or a new object")
                return self._interact(frame, lambda: engine.add_point(object_id, frame, x, y, positive))
            if object_id not in self.pending:
                raise AppError(f"unknown object {object_id}: add it first", 404)
            if not positive:
                raise AppError("an object's first point must be positive (left click on the object)")
            # The object starts on the frame of its first point (it has no mask before it).
            state = self._interact(frame, lambda: engine.add_object(object_id, frame, [(x, y, True)]))
            self.pending.discard(object_id)
            return state

    def remove_point(self, point_id: int, frame: int) -> dict:
        self._frame_index(frame)
        return self._interact(frame, lambda: self.engine.remove_point(point_id, frame))

    def undo(self, frame: int) -> dict:
        if not self.engine.can_undo:
            raise AppError("nothing to undo")
        return self._interact(frame, self.engine.undo)

    def redo(self, frame: int) -> dict:
        if not self.engine.can_redo:
            raise AppError("nothing to redo")
        return self._interact(frame, self.engine.redo)

    # -- propagation -----------------------------------------------------------------------
    def start_propagation(self) -> dict:
        with self._exclusive():
            if not self.engine.object_ids:
                raise AppError("nothing to propagate: click a point on an object first")
            job = Job(self.engine.num_frames)
            self.job = job
            job.thread = threading.Thread(target=self._propagate, args=(job,), name=f"sampt-app-{self.id}",
                                          daemon=True)
            job.thread.start()
            return self.state()

    def _propagate(self, job: Job) -> None:
        with self.lock:
            version = self.version

            def on_frame(t: int) -> None:
                png = self._render_mask(t)
                if version == self.version:
                    self._masks[t] = png
                job.done.append(t)

            try:
                report = self.engine.propagate(on_frame=on_frame, should_stop=job.cancel.is_set)
                job.report = report_json(report)
                self.last_report = job.report
            except Exception as error:  # shown on the page; the points stay
                job.error = str(_friendly(error))
            finally:
                job.finished = time.perf_counter()

    def cancel(self) -> dict:
        if self.job is not None and self.job.running:
            self.job.cancel.set()
        return self.state()

    def wait(self, timeout: float = 60.0) -> None:
        """Wait for the running propagation (tests, shutdown)."""
        if self.job is not None and self.job.thread is not None:
            self.job.thread.join(timeout)

    # -- exports and saved sessions --------------------------------------------------------
    def export(self) -> dict:
        """Write every export under ``<session>/exports/<n>/`` and zip it; returns what was written."""
        import zipfile

        from sampt.io.atomic import atomic_open
        from sampt.io.png import davis_palette
        from sampt.writers import write_object_pngs

        with self._exclusive():
            engine = self.engine
            if not engine.object_ids:
                raise AppError("nothing to export: no object has a point yet")
            self.exports += 1
            out = self.folder / "exports" / f"{self.exports:03d}"
            notes = []
            try:
                written = engine.write_vos_outputs(out, overlay=True, palette=davis_palette())
                import torch

                index_masks = torch.stack([engine.index_mask(t) for t in range(engine.num_frames)])
                write_object_pngs(out / "objects", engine.name, engine.frame_names, index_masks, engine.object_ids)
                try:
                    engine.write_query_points(out / f"{engine.name}_query_points.txt")
                except ValueError as error:
                    notes.append(f"no query-points file: {error}")
                self._write_session_file(out / f"{engine.name}_session.json")
            except AppError:
                raise
            except Exception as error:
                raise _friendly(error) from error
            files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
            zip_path = self.folder / "exports" / f"{self.exports:03d}.zip"
            with atomic_open(zip_path, "wb") as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
                for name in files:
                    archive.write(out / name, name)
            self._changed()  # write_vos_outputs brought every frame up to date
            state = self.state()
            state["export"] = {"number": self.exports, "files": files, "notes": notes,
                               "url": f"/api/sessions/{self.id}/exports/{self.exports}.zip",
                               "written": sorted(written)}
            return state

    def session_json(self) -> dict:
        with self._exclusive():
            return {"format": SESSION_FORMAT, "version": 1,
                    "clip": {"name": self.clip.name, "source": self.clip.source, "sha256": self.clip.digest,
                             "num_frames": self.clip.num_frames, "size": list(self.clip.size)},
                    "objects": [o["id"] for o in self.objects()],
                    "history": self.engine.history_json()}

    def _write_session_file(self, path: Path) -> None:
        from sampt.io.atomic import write_text_atomic

        write_text_atomic(path, json.dumps(self.session_json(), indent=1))

    def open_session(self, data: bytes, clips: Callable[[dict], Optional[Clip]]) -> dict:
        """Reopen a saved session: its clip (the current one or one the server knows, matched by its
        pixels) and its interactions replayed with ``apply``. On any error nothing changes."""
        try:
            saved = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise AppError(f"not a saved session: {error}") from error
        if not isinstance(saved, dict) or saved.get("format") != SESSION_FORMAT:
            raise AppError(f"not a saved session of sampt app (expected \"format\": \"{SESSION_FORMAT}\")")
        clip_ref, history = saved.get("clip") or {}, saved.get("history") or {}
        interactions = history.get("interactions")
        if not isinstance(interactions, list):
            raise AppError("the saved session has no interaction list (history.interactions)")
        with self._exclusive():
            clip = self.clip if clip_ref.get("sha256") == self.clip.digest else clips(clip_ref)
            if clip is None:
                raise AppError(f"this session was saved on the clip {clip_ref.get('name')!r} "
                               f"({clip_ref.get('num_frames')} frames, {clip_ref.get('size')}); open that clip first, "
                               "then the session", 409)
            engine = self._new_engine(clip)
            for number, interaction in enumerate(interactions):
                try:
                    engine.apply(interaction)
                except Exception as error:
                    raise AppError(f"cannot replay interaction {number + 1} of the saved session: "
                                   f"{_friendly(error)}") from error
            self._open(clip, engine)
            self.pending = {int(i) for i in saved.get("objects", []) if isinstance(i, int) and 0 < i < 256
                            and i not in engine.object_ids}
            self.next_object_id = max([*engine.object_ids, *self.pending, 0]) + 1
            return self.state()


class SessionManager:
    """All sessions of one server: created per browser tab, each in its own folder."""

    def __init__(self, workdir: Path, limits: Limits, models: tuple, clip_path: Optional[Path]):
        self.workdir = Path(workdir)
        self.limits = limits
        self.models = models
        self.clip_path = clip_path
        self._initial: Optional[Clip] = None
        self._sessions: dict[str, AppSession] = {}
        self._lock = threading.Lock()

    def initial_clip(self) -> Clip:
        if self._initial is None:
            if self.clip_path is None:
                raise AppError("no clip given: upload one (the server was started without --video)", 404)
            self._initial = read_clip(self.clip_path, self.limits)
        return self._initial

    def known_clip(self, reference: dict) -> Optional[Clip]:
        if self.clip_path is not None and reference.get("sha256") == self.initial_clip().digest:
            return self.initial_clip()
        return None

    def create(self) -> AppSession:
        session_id = secrets.token_urlsafe(12)
        folder = self.workdir / session_id
        folder.mkdir(parents=True)
        try:
            clip = self.initial_clip()
        except ClipError as error:
            raise AppError(str(error), 400) from error
        session = AppSession(session_id, folder, clip, self.models, self.limits)
        with self._lock:
            self._sessions[session_id] = session
        return session

    def get(self, session_id: str) -> AppSession:
        session = self._sessions.get(session_id)
        if session is None:
            raise AppError(f"unknown session {session_id!r} (the server may have restarted: reload the page)", 404)
        return session

    def close(self) -> None:
        for session in list(self._sessions.values()):
            if session.job is not None:
                session.job.cancel.set()
                session.wait(10)
