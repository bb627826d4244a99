"""A model's own settings for the commands that run it: vditscope.json (generation size and schedule,
caption vocabulary) over the pipeline's defaults, and the default prompts they imply."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import VditscopeError
from .pipeline_defaults import pipeline_defaults

DEFAULT_PROMPTS = ("a car driving on the highway", "a red car driving on the highway")


def model_settings(model_dir: Path) -> dict[str, Any]:
    """vditscope.json of a model directory (generation settings, vocabulary), or {}; its generation
    settings start from the pipeline's own defaults, so that the schedule is known before anything runs."""
    path = model_dir / "vditscope.json"
    settings: dict[str, Any] = {}
    if path.is_file():
        try:
            settings = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise VditscopeError(f"{path} is not valid JSON ({exc})") from exc
        if not isinstance(settings, dict) or not isinstance(settings.get("generation", {}), dict):
            raise VditscopeError(f"{path} is not a vditscope.json object with a generation object")
    defaults = pipeline_defaults(model_dir)
    if defaults:
        settings = {**settings, "generation": {**defaults, **settings.get("generation", {})}}
    return settings


def default_prompts(settings: dict[str, Any]) -> list[str]:
    vocabulary = settings.get("vocabulary")
    if not vocabulary:
        return list(DEFAULT_PROMPTS)
    colors, shapes, directions, backgrounds = (
        vocabulary[key] for key in ("colors", "shapes", "directions", "backgrounds")
    )

    def pick(words: list[str], i: int) -> str:
        return words[i % len(words)]

    return [
        f"a {pick(colors, 2 * i)} {pick(shapes, i)} moving {pick(directions, i)} on a {pick(backgrounds, i)} background"
        for i in range(3)
    ]
