"""What ``sampt app`` reads from a run config: the clip and the SAM-PT method.

A run config is the YAML that ``sampt predict`` takes (stackable, later files win): the clip is
``data.init_args.frames`` and the method is ``model.init_args.method`` (a ``SamPtMethod``, whose
``sam``, ``tracker`` and ``sam_pt`` sections are parsed by jsonargparse exactly as the Lightning
CLI parses them). Nothing is built here until :func:`build_method` is called.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from sampt.errors import SamptError

#: The clip opened when neither the config nor ``--video`` names one.
DEFAULT_CLIP = Path(__file__).resolve().parents[2] / "assets" / "demo" / "car-shadow"
SAM_PT_METHOD = "sampt.methods.sam_pt.method.SamPtMethod"


class AppConfigError(SamptError):
    """A config that ``sampt app`` cannot use (the message says which key and why)."""


@dataclass
class AppConfig:
    """The parts of the run config the app uses.

    Attributes:
        clip: the clip opened first (a frames folder or a video file), or None.
        method: ``{"sam": ..., "tracker": ..., "sam_pt": ...}`` as written in the config.
        sources: the config files read, in order.
    """

    clip: Optional[Path]
    method: dict = field(default_factory=dict)
    sources: list = field(default_factory=list)


def _merge(base: Any, update: Any) -> Any:
    """Stack ``update`` on ``base`` as jsonargparse stacks configs: dicts merge key by key; a
    node whose ``class_path`` changes is replaced as a whole (its old ``init_args`` do not apply)."""
    if not (isinstance(base, dict) and isinstance(update, dict)):
        return copy.deepcopy(update)
    if "class_path" in update and "class_path" in base and _short(update["class_path"]) != _short(base["class_path"]):
        return copy.deepcopy(update)
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
    return merged


def _short(class_path: Any) -> str:
    return str(class_path).rsplit(".", 1)[-1]


def _init_args(node: Any, where: str) -> dict:
    """A subclass node's arguments, with or without the ``init_args`` level (both are valid)."""
    if node is None:
        return {}
    if not isinstance(node, dict):
        raise AppConfigError(f"{where} must be a mapping, got {node!r}")
    args = {k: v for k, v in node.items() if k not in ("class_path", "init_args", "dict_kwargs")}
    nested = node.get("init_args") or {}
    if not isinstance(nested, dict):
        raise AppConfigError(f"{where}.init_args must be a mapping, got {nested!r}")
    return _merge(args, nested)


def _with_init_args(node: Any) -> Any:
    """A subclass node in the ``{class_path, init_args}`` spelling (bare keys moved into ``init_args``)."""
    if not isinstance(node, dict):
        return node
    args = {k: v for k, v in node.items() if k not in ("class_path", "init_args", "dict_kwargs")}
    out = {k: node[k] for k in ("class_path",) if k in node}
    nested = node.get("init_args")
    out["init_args"] = _merge(args, nested) if isinstance(nested, dict) else (args if nested is None else nested)
    return out


def _canonical(config: dict) -> dict:
    """One file's ``data``, ``model`` and ``model.init_args.method`` in the ``init_args`` spelling, so
    that files using either spelling stack key by key."""
    config = dict(config)
    for key in ("data", "model"):
        if key in config:
            config[key] = _with_init_args(config[key])
    model_args = config.get("model", {}).get("init_args") if isinstance(config.get("model"), dict) else None
    if isinstance(model_args, dict) and "method" in model_args:
        model_args["method"] = _with_init_args(model_args["method"])
    return config


def read_app_config(paths: Sequence[str | Path], video: Optional[str | Path] = None) -> AppConfig:
    """Read and stack ``paths``; ``video`` (``--video``) overrides ``data.init_args.frames``."""
    import yaml

    stacked: dict = {}
    sources = []
    for path in paths:
        path = Path(path).expanduser()
        if not path.is_file():
            raise AppConfigError(f"config {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise AppConfigError(f"config {path} is not valid YAML: {error}") from error
        if not isinstance(loaded, dict):
            raise AppConfigError(f"config {path} must be a mapping at the top level")
        stacked = _merge(stacked, _canonical(loaded))
        sources.append(path)
    data = _init_args(stacked.get("data"), "data")
    model = stacked.get("model") or {}
    if model and not isinstance(model, dict):
        raise AppConfigError(f"model must be a mapping, got {model!r}")
    method_node = _init_args(model, "model").get("method") or {}
    class_path = method_node.get("class_path", SAM_PT_METHOD) if isinstance(method_node, dict) else None
    if class_path is not None and _short(class_path) != "SamPtMethod":
        raise AppConfigError(f"sampt app runs SAM-PT; model.init_args.method.class_path is {class_path!r} "
                             f"(expected {SAM_PT_METHOD})")
    method = _init_args(method_node, "model.init_args.method")
    unknown = sorted(set(method) - {"sam", "tracker", "sam_pt"})
    if unknown:
        raise AppConfigError(f"unknown keys in model.init_args.method.init_args: {', '.join(unknown)} "
                             "(expected sam, tracker, sam_pt)")
    clip = video if video is not None else data.get("frames")
    if clip is not None:
        clip = Path(str(clip)).expanduser()
        if not clip.is_absolute() and not clip.exists():
            # Configs name paths from the repository root (as the README's commands run them).
            for base in [*(s.parent for s in sources), *(s.parent.parent for s in sources), DEFAULT_CLIP.parents[2]]:
                if (base / clip).exists():
                    clip = base / clip
                    break
    return AppConfig(clip=clip, method=method, sources=sources)


def build_method(method: dict, device: str = "cpu"):
    """``SamPtMethod`` from the config's ``sam`` / ``tracker`` / ``sam_pt`` sections, prepared
    (weights loaded) on ``device``. Returns ``(sam model, tracker, SamPtConfig)``."""
    from jsonargparse import ArgumentParser

    from sampt.methods.sam_pt.method import SamPtMethod

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(SamPtMethod, "method")
    try:
        parsed = parser.parse_object({"method": method})
        instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
        sam_pt_method = instantiate(parsed).method
    except SamptError:
        raise
    except Exception as error:  # jsonargparse reports config mistakes in several classes
        cause = error.__cause__ if isinstance(error.__cause__, SamptError) else None
        if cause is not None:
            raise cause from error
        raise AppConfigError(f"model.init_args.method.init_args: {error}") from error
    if "tracker" not in method:
        raise AppConfigError("the config names no point tracker (model.init_args.method.init_args.tracker)")
    if not isinstance(sam_pt_method, SamPtMethod):  # older jsonargparse: a namespace of arguments
        sam_pt_method = SamPtMethod(**vars(sam_pt_method))
    sam_pt_method.prepare(device)
    return sam_pt_method.sam, sam_pt_method.tracker, sam_pt_method.config
