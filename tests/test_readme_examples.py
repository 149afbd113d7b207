"""The README's examples run as written.

Every ```bash block of README.md that follows a ``<!-- example -->`` line is run command by
command, in the README's order, against a platform set up the way `make up` sets it up
(`cliprs_tools.devstack.up`): a fresh database, so every id is the one a fresh `make up` gives
(area 1 and job 1 the Sentinel-2 demo area, area 2 and job 2 the Landsat area); the demo pyramid
at zooms 10-14 as source ``demo`` and the Landsat scene as source ``landsat``; access control on,
with an admin key in ``.run/admin-key`` of the directory the commands run in; both areas ingested
with that key, in that order. The platform runs on the tiny CLIP instead of `make up`'s generated
fallback CLIP: the ids, the plans and the shapes of the answers do not depend on the model (what
does, scores and merged windows, is left out where the README shows a hit).

What is substituted, and nothing else: the base URLs (ports 8000 and 8001 of `make up` become the
test's free ports; the client CLI gets its URL from ``CLIPRS_API``). Each command must exit 0,
with ``curl`` run as ``curl --fail-with-body`` (so every answer must be 2xx). A ``# {...}`` line
right after a command is the answer the README shows: the command's answer must hold each of its
keys with the same value; the hit the README shows ("A hit looks like") must be the platform's
(its shape, window, tile, footprint and address). Before each command the test waits, as a reader would, until the ingest
jobs and detection runs that earlier examples started have finished.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from cliprs_testing.db import throwaway_database
from cliprs_tools.demo import demo_band_paths, render_pyramid
from cliprs_tools.devstack import DEMO_AREA, ingest
from cliprs_tools.keys import local_admin_key
from cliprs_tools.landsat import LANDSAT_AREA, LANDSAT_SOURCE, landsat_source_template
from tests.support.platform import run_platform

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- example -->"
ASSIGNMENT = re.compile(r"^(export\s+)?[A-Za-z_][A-Za-z0-9_]*=")
COMMAND_TIMEOUT_S = 120  # one command (the CLI's detect follows its run to the end)
SETTLE_TIMEOUT_S = 180  # what earlier examples started (an ingest, a detection run)


@dataclass
class Example:
    """One command of a README example block, with the answer the README shows (if any)."""

    line: int  # 1-based line of README.md where the command starts
    command: str
    prelude: list[str]  # the block's variable assignments before it (KEY=$(cat .run/admin-key))
    expected: dict | None = None


def complete(command: str) -> bool:
    """Whether ``command`` closes its quotes (a quoted JSON body may go on over lines)."""
    try:
        shlex.split(command, comments=True)
    except ValueError:
        return False
    return True


def readme_examples(text: str) -> list[Example]:
    """The commands of every ```bash block marked ``<!-- example -->``, in order."""
    lines = text.splitlines()
    examples: list[Example] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != MARKER:
            i += 1
            continue
        assert lines[i + 1].strip() == "```bash", f"README.md:{i + 1}: {MARKER} must precede a ```bash block"
        i += 2
        prelude: list[str] = []
        after_command = False
        while lines[i].strip() != "```":
            start, command = i, lines[i]
            while command.endswith("\\") or not complete(command):  # continued, or in a quote
                i += 1
                command += "\n" + lines[i]
            i += 1
            stripped = command.strip()
            if stripped.startswith("# {") and after_command:
                examples[-1].expected = json.loads(stripped[2:])
            elif stripped and not stripped.startswith("#"):
                examples.append(Example(start + 1, command, list(prelude)))
                if ASSIGNMENT.match(stripped):
                    prelude.append(command)
            after_command = bool(stripped) and not stripped.startswith("#")
        i += 1
    return examples


def test_the_readme_marks_its_examples() -> None:
    """The parser finds the examples (a control for the test below): the plan and its answer,
    writes with the key, and the client CLI."""
    examples = readme_examples(README.read_text())
    commands = "\n".join(e.command for e in examples)
    assert len(examples) >= 20, len(examples)
    plan = [e for e in examples if "/v1/plan?" in e.command]
    assert len(plan) == 1 and plan[0].expected and "per_zoom" in plan[0].expected
    assert "python -m cliprs_tools.client" in commands
    writes = [
        e for e in examples if re.search(r"-X (POST|PATCH|DELETE)\b.*/v1/(areas|projects|runs)", e.command)
    ]
    assert writes and all("admin-key" in e.command or "$KEY" in e.command for e in writes)
    client = [e for e in examples if "cliprs_tools.client" in e.command]
    assert all("--api-key" in e.command or "CLIPRS_API_KEY" in "".join(e.prelude) for e in client)


@pytest.fixture(scope="module")
def make_up(redis_url: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The platform as `make up` leaves it, and the directory its commands run in."""
    root = tmp_path_factory.mktemp("make-up")
    pyramid = root / "var" / "demo-tiles"
    sources = {"demo": f"file://{pyramid}/{{z}}/{{x}}/{{y}}.png", LANDSAT_SOURCE: landsat_source_template()}
    env = {
        "CLIPRS_TILE_SOURCES": json.dumps(sources),
        "CLIP_MODEL": str(tiny_model_dir),
        "SEARCH_AUTH": "on",  # as `make up`: writes need a key
    }
    # A database of its own: ids start at 1, as on a fresh `make up`. The demo pyramid is
    # rendered while the services start (the tiler reads it only once an area is fetched).
    with ThreadPoolExecutor(1) as pool:
        rendering = pool.submit(
            render_pyramid, demo_band_paths(), pyramid, DEMO_AREA["zooms"], progress=False
        )
        with (
            throwaway_database() as database_url,
            run_platform(
                root / ".run",
                database_url=database_url,
                redis_url=redis_url,
                data_dir=root / "var",
                namespace=f"readme-{uuid.uuid4().hex[:8]}",
                env=env,
                health_only=True,  # no index before the first ingest
            ) as platform,
        ):
            key = local_admin_key(database_url, root / ".run" / "admin-key")
            headers = {"Authorization": f"Bearer {key}"}
            rendering.result()
            for area in (DEMO_AREA, LANDSAT_AREA):
                ingest(platform["api"], area, timeout_s=SETTLE_TIMEOUT_S, show=False, headers=headers)
            yield {**platform, "root": root, "database_url": database_url}


def substitute(command: str, platform: dict) -> str:
    """`make up`'s base URLs -> the test platform's."""
    api, tiler = platform["api"], platform["tiler"]
    for host in ("http://127.0.0.1", "http://localhost", "127.0.0.1", "localhost"):
        command = command.replace(f"{host}:8000", api if host.startswith("http") else api[len("http://") :])
        command = command.replace(
            f"{host}:8001", tiler if host.startswith("http") else tiler[len("http://") :]
        )
    return command


def unfinished(api: str) -> list[str]:
    """The ingest jobs and detection runs still under way."""
    busy = [
        f"job {a['job']['id']}: {a['job']['state']}"
        for a in httpx.get(f"{api}/v1/areas", timeout=30).json()
        if a.get("job") and a["job"]["state"] not in ("done", "failed")
    ]
    for project in httpx.get(f"{api}/v1/projects", timeout=30).json():
        runs = httpx.get(f"{api}/v1/projects/{project['id']}", timeout=30).json().get("runs", [])
        busy += [f"run {r['id']}: {r['state']}" for r in runs if r["state"] in ("queued", "running")]
    return busy


def settle(api: str) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while busy := unfinished(api):
        assert time.monotonic() < deadline, f"still under way after {SETTLE_TIMEOUT_S} s: {busy}"
        time.sleep(0.5)


def run_example(example: Example, platform: dict) -> subprocess.CompletedProcess:
    script = "\n".join(
        [
            "set -euo pipefail",
            'curl() { command curl --fail-with-body --silent --show-error "$@"; }',
            *(substitute(line, platform) for line in example.prelude),
            substitute(example.command, platform),
        ]
    )
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # `python`: the venv's
        "HOME": str(platform["root"]),
        "CLIPRS_API": platform["api"],
    }
    return subprocess.run(
        ["bash", "-c", script],
        cwd=platform["root"],
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )


def test_every_readme_example_runs_as_written(make_up: dict) -> None:
    failures = []
    for example in readme_examples(README.read_text()):
        settle(make_up["api"])
        done = run_example(example, make_up)
        where = f"README.md:{example.line}: {example.command}"
        if done.returncode != 0:
            failures.append(f"{where}\n  exit {done.returncode}: {done.stderr.strip()} {done.stdout[:500]}")
            continue
        if example.expected is not None:
            answer = json.loads(done.stdout)
            shown = {k: answer.get(k) for k in example.expected}
            if shown != example.expected:
                failures.append(
                    f"{where}\n  the README shows {example.expected}, the platform answers {shown}"
                )
    assert not failures, "\n".join(failures)


def test_substitute_changes_only_the_ports() -> None:
    platform = {"api": "http://127.0.0.1:41000", "tiler": "http://127.0.0.1:41001"}
    command = "curl 'localhost:8000/v1/x' http://127.0.0.1:8001/v1/plan -d '{\"bbox\": [1, 2]}' # :8000"
    assert substitute(command, platform) == (
        "curl '127.0.0.1:41000/v1/x' http://127.0.0.1:41001/v1/plan -d '{\"bbox\": [1, 2]}' # :8000"
    )
    assert shlex.split(substitute(command, platform))[0] == "curl"


def readme_hit(text: str) -> dict:
    """The JSON block after "A hit looks like": the first hit of ``GET /v1/windows/{id}/similar``."""
    after = text[text.index("A hit looks like") :]
    start = after.index("```json") + len("```json")
    return json.loads(after[start : after.index("\n```", start)])


def same_shape(shown: object, real: object, path: str = "hit") -> list[str]:
    """Where ``shown`` and ``real`` differ in keys (recursively) or in the type of a value."""
    if isinstance(shown, dict) and isinstance(real, dict):
        if set(shown) != set(real):
            return [f"{path}: the README shows {sorted(shown)}, the platform answers {sorted(real)}"]
        return [d for k in shown for d in same_shape(shown[k], real[k], f"{path}.{k}")]
    if isinstance(shown, list) and isinstance(real, list):
        return [d for a, b in zip(shown[:1], real[:1], strict=False) for d in same_shape(a, b, f"{path}[0]")]
    numbers = (int, float)
    if isinstance(shown, numbers) and isinstance(real, numbers) and not isinstance(shown, bool):
        return []
    return [] if type(shown) is type(real) else [f"{path}: {shown!r} vs {real!r}"]


def test_the_readme_hit_is_what_the_platform_answers(make_up: dict) -> None:
    """The README's hit has the real answer's shape, and is that window as the platform has it
    (the search-model-dependent values aside: score, merged and identical windows)."""
    shown = readme_hit(README.read_text())
    window = shown["properties"]["window_id"]
    resp = httpx.get(f"{make_up['api']}/v1/windows/{window}/similar", params={"k": 5}, timeout=60)
    assert resp.status_code == 200, resp.text
    real = resp.json()["features"][0]
    answer = f"\nthe platform's hit: {json.dumps(real)}"
    differences = same_shape(shown, real)
    assert not differences, "\n".join(differences) + answer
    props, real_props = shown["properties"], real["properties"]
    for key in ("window_id", "rank", "z", "scale", "tile", "valid_fraction", "address", "place"):
        assert props[key] == real_props[key], key + answer
    assert real["id"] == shown["id"] and props["score"] == pytest.approx(real_props["score"], abs=0.005), (
        answer
    )
    assert props["center"] == pytest.approx(real_props["center"], abs=1e-4), answer
    ring, real_ring = shown["geometry"]["coordinates"], real["geometry"]["coordinates"]
    assert np.allclose(ring, real_ring, atol=1e-4), answer
    assert substitute(props["image_url"], make_up) == real_props["image_url"], answer
