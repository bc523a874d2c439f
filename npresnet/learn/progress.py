"""The learner's folder: where each exercise's file lives, and what the commands remember about it.

Everything is written under the folder the learner named (``--dir``): their files, and one small
JSON file, ``.npresnet-learn.json``, holding how many hints each exercise has shown and the last
check's result per exercise, keyed by the file's SHA-256 (a changed file is checked again).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from .catalogue import EXERCISES, Exercise
from .grader import Result, grade

STATE_FILE = ".npresnet-learn.json"
DEFAULT_DIR = "exercises"


def path_of(folder: str, exercise: Exercise) -> str:
    return os.path.join(folder, exercise.filename)


def _state_path(folder: str) -> str:
    return os.path.join(folder, STATE_FILE)


def read_state(folder: str) -> dict[str, Any]:
    try:
        with open(_state_path(folder), encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):
        return {"hints": {}, "results": {}}
    return {"hints": dict(state.get("hints", {})), "results": dict(state.get("results", {}))}


def write_state(folder: str, state: dict[str, Any]) -> None:
    os.makedirs(folder, exist_ok=True)
    tmp = _state_path(folder) + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1, sort_keys=True)
    os.replace(tmp, _state_path(folder))


def digest(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def check(folder: str, exercise: Exercise) -> Result:
    """Grade the learner's file and remember the result (by the file's digest)."""
    path = path_of(folder, exercise)
    result = grade(exercise, path)
    sha = digest(path)
    if sha is not None:
        state = read_state(folder)
        state["results"][exercise.name] = {"sha256": sha, "status": result.status}
        write_state(folder, state)
    return result


def status(folder: str, exercise: Exercise, state: dict[str, Any]) -> str:
    """The exercise's status: "pass", "fail", "not written", "crash" (the last check of the file as
    it is now), "unchecked" (changed or never checked), or "not started" (no file)."""
    sha = digest(path_of(folder, exercise))
    if sha is None:
        return "not started"
    recorded = state["results"].get(exercise.name)
    if recorded is None or recorded.get("sha256") != sha:
        return "unchecked"
    return str(recorded.get("status", "unchecked"))


def statuses(folder: str, regrade: bool = True) -> dict[str, str]:
    """Each exercise's status; files changed since their last check are checked again (``regrade``)."""
    state = read_state(folder)
    found = {}
    for exercise in EXERCISES:
        found[exercise.name] = status(folder, exercise, state)
        if found[exercise.name] == "unchecked" and regrade:
            found[exercise.name] = check(folder, exercise).status
    return found


def hint_count(folder: str, exercise: Exercise) -> int:
    return int(read_state(folder)["hints"].get(exercise.name, 0))


def next_hint(folder: str, exercise: Exercise) -> tuple[int, str]:
    """The next hint (1-based number, text); after the last one, the last one again."""
    state = read_state(folder)
    shown = int(state["hints"].get(exercise.name, 0))
    number = min(shown + 1, len(exercise.hints))
    state["hints"][exercise.name] = number
    write_state(folder, state)
    return number, exercise.hints[number - 1]
