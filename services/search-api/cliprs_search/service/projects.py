"""Projects, their labels, and refine: a search whose query vector is built from the project's
text and its labelled windows (Rocchio relevance feedback).

The refine query is ``normalise(a * text + b * mean(positives) - c * mean(negatives))`` with
``a = 1``, ``b = 0.75``, ``c = 0.25`` unless the request says otherwise: each mean is over the
labelled windows' unit vectors as the index stores them, and a term without vectors (no text, no
positives or no negatives) drops out. Without labels refine is the text search, restricted to the
project's areas.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass

import numpy as np

from cliprs.errors import InvalidInput, NotFound
from cliprs.runs import remove_scores
from cliprs_search.context import Context
from cliprs_search.repository import projects as repo
from cliprs_search.schemas.projects import (
    Label,
    LabelRequest,
    Project,
    ProjectCreate,
    ProjectUpdate,
    RefineBody,
)
from cliprs_search.schemas.search import SearchResults
from cliprs_search.service.search import Query, answer_search, resolve_options
from cliprs_search.service.shared import validate_query

# The Rocchio weights (text, mean of positives, mean of negatives): the classic relevance
# feedback defaults, with the text kept at full weight because it says what the analyst wants.
ROCCHIO_A, ROCCHIO_B, ROCCHIO_C = 1.0, 0.75, 0.25


def rocchio(
    text: np.ndarray | None,
    positives: np.ndarray,
    negatives: np.ndarray,
    a: float = ROCCHIO_A,
    b: float = ROCCHIO_B,
    c: float = ROCCHIO_C,
) -> np.ndarray:
    """The unit query vector ``normalise(a * text + b * mean(positives) - c * mean(negatives))``;
    ``positives`` and ``negatives`` are (n, dim) arrays (n may be 0: the term drops out).

    Raises `InvalidInput` when nothing points anywhere: no text and no positives (the negatives
    alone say what is *not* wanted), or weights that cancel out."""
    check_direction(text is not None, len(positives), a, b)
    dim = text.shape[-1] if text is not None else (positives if len(positives) else negatives).shape[-1]
    q = np.zeros(dim, dtype=np.float64)
    if text is not None:
        q += a * np.asarray(text, dtype=np.float64).ravel()
    if len(positives):
        q += b * np.asarray(positives, dtype=np.float64).mean(axis=0)
    if len(negatives):
        q -= c * np.asarray(negatives, dtype=np.float64).mean(axis=0)
    norm = float(np.linalg.norm(q))
    if not np.isfinite(norm) or norm < 1e-6:
        raise InvalidInput(
            "the refine weights cancel out (the query vector is zero); raise a or b, or lower c"
        )
    return (q / norm).astype(np.float32)


def check_direction(has_text: bool, positives: int, a: float, b: float) -> None:
    """`InvalidInput` unless the text or the positives point somewhere (with a weight)."""
    if (not has_text or a == 0) and (positives == 0 or b == 0):
        raise InvalidInput(
            "refine needs something to look for: give the project a query (PATCH /v1/projects/{id} "
            "with query, or q in this request) or label at least one window positive (with b > 0)"
        )


# ----------------------------------------------------------------------------- projects


def _name(value: str) -> str:
    name = value.strip()
    if not name:
        raise InvalidInput("the project needs a name, e.g. 'Boats of Chincoteague'")
    return name


def _query(ctx: Context, value: str | None) -> str | None:
    return None if value is None else validate_query(value, ctx.settings.max_query_chars)


async def _check_areas(conn, area_ids: list[int]) -> list[int]:
    """The distinct area ids, or `NotFound` naming those that do not exist."""
    wanted = sorted(set(area_ids))
    missing = sorted(set(wanted) - await repo.existing_areas(conn, wanted))
    if missing:
        raise NotFound(f"no area with id {', '.join(map(str, missing))}; GET /v1/areas lists the areas")
    return wanted


async def _project(conn, project_id: int, runs: bool = True, lock: bool = False) -> Project:
    row = await repo.project(conn, project_id, lock=lock)
    if row is None:
        raise NotFound(f"no project {project_id}; GET /v1/projects lists the projects")
    if runs:
        row["runs"] = await repo.runs(conn, project_id)
    return Project(**row)


async def create_project(ctx: Context, body: ProjectCreate) -> Project:
    """A new project over existing areas."""
    name, query = _name(body.name), _query(ctx, body.query)
    async with ctx.engine.begin() as conn:
        areas = await _check_areas(conn, body.area_ids)
        project_id = await repo.insert_project(conn, name, query)
        await repo.set_project_areas(conn, project_id, areas)
        return await _project(conn, project_id)


async def list_projects(ctx: Context) -> list[Project]:
    """Every project with its areas and label counts (runs: see each project)."""
    async with ctx.engine.connect() as conn:
        return [Project(**row) for row in await repo.projects(conn)]


async def get_project(ctx: Context, project_id: int) -> Project:
    async with ctx.engine.connect() as conn:
        return await _project(conn, project_id)


async def update_project(ctx: Context, project_id: int, body: ProjectUpdate) -> Project:
    """Change the fields given: ``name``, ``query`` (null clears it), ``area_ids`` (replaces the
    list; labels outside the new areas stay, they still teach what is wanted)."""
    given = body.model_fields_set
    changes: dict = {}
    if "name" in given:
        if body.name is None:
            raise InvalidInput("name cannot be null; give the project a name or leave the field out")
        changes["name"] = _name(body.name)
    if "query" in given:
        changes["query"] = _query(ctx, body.query)
    async with ctx.engine.begin() as conn:
        await _project(conn, project_id, runs=False, lock=True)
        if "area_ids" in given:
            if body.area_ids is None:
                raise InvalidInput("area_ids cannot be null; give a list (an empty one removes every area)")
            await repo.set_project_areas(conn, project_id, await _check_areas(conn, body.area_ids))
        await repo.update_project(conn, project_id, changes)
        return await _project(conn, project_id)


async def delete_project(ctx: Context, project_id: int) -> Project:
    """Remove a project with its labels and runs, and then its runs' scores files (one the
    indexer writes later, or on another data dir, is the indexer's garbage collection's);
    answers the project as it was."""
    async with ctx.engine.begin() as conn:
        project = await _project(conn, project_id, lock=True)
        run_ids = await repo.run_ids(conn, project_id)
        await repo.delete_project(conn, project_id)
    await asyncio.to_thread(remove_scores, ctx.core.data_dir, run_ids)
    return project


# ----------------------------------------------------------------------------- labels


async def list_labels(ctx: Context, project_id: int, footprint: bool = True) -> list[Label]:
    async with ctx.engine.connect() as conn:
        await _project(conn, project_id, runs=False)
        return [Label(**row) for row in await repo.labels(conn, project_id, footprint)]


async def add_label(ctx: Context, project_id: int, body: LabelRequest) -> Label:
    """Label a window of the project's areas (again: the new label replaces the old)."""
    by = (body.by.strip() or None) if body.by is not None else None
    async with ctx.engine.begin() as conn:
        project = await _project(conn, project_id, runs=False, lock=True)
        placement = await repo.window_placement(conn, body.window_id, project.area_ids)
        if placement is None:
            raise NotFound(f"no window {body.window_id}; label the window_id of a search hit")
        if not project.area_ids:
            raise InvalidInput(
                f"project {project_id} has no areas; add the area of window {body.window_id} first "
                f"(PATCH /v1/projects/{project_id} with area_ids)"
            )
        if not placement["inside"]:
            where = (
                f"areas {', '.join(map(str, placement['area_ids']))}"
                if placement["area_ids"]
                # Its tile overhangs an area's box but the window itself lies outside every box.
                else "no area's box (it is in the overhang of a tile at an area's edge)"
            )
            raise InvalidInput(
                f"window {body.window_id} lies in {where}, not in the project's areas "
                f"({', '.join(map(str, project.area_ids))}); label a window of those areas or add its area "
                f"to the project (PATCH /v1/projects/{project_id} with area_ids)"
            )
        await repo.upsert_label(conn, project_id, body.window_id, body.positive, by)
        return Label(**await repo.label(conn, project_id, body.window_id))


async def delete_label(ctx: Context, project_id: int, window_id: int) -> Label:
    """Remove a window's label; answers the label as it was."""
    async with ctx.engine.begin() as conn:
        await _project(conn, project_id, runs=False, lock=True)
        row = await repo.label(conn, project_id, window_id)
        if row is None:
            raise NotFound(f"window {window_id} has no label in project {project_id}")
        await repo.delete_label(conn, project_id, window_id)
    return Label(**row)


# ----------------------------------------------------------------------------- refine


async def refine(ctx: Context, project_id: int, body: RefineBody) -> SearchResults:
    """Search the project's areas with the Rocchio query of its text and labels."""
    started = time.perf_counter()
    async with ctx.engine.connect() as conn:
        project = await _project(conn, project_id, runs=False)
        positive_ids, negative_ids = await repo.label_ids(conn, project_id)
    areas = _areas_to_search(project, body)
    text = body.q if body.q is not None else project.query
    if text is not None:
        text = validate_query(text, ctx.settings.max_query_chars)
    labels = _labelled_vectors(ctx, positive_ids, negative_ids)
    use_text = text is not None and body.a > 0
    # Checked before embedding: a request that cannot build a query fails without the embedder.
    check_direction(use_text, len(labels.pos_found), body.a, body.b)
    query = await _refine_query(ctx, body, text if use_text else None, labels, started)
    query.echo = {
        "refine": project_id,
        "q": text,
        "positives": len(labels.pos_found),
        "negatives": len(labels.neg_found),
        "weights": {"a": body.a, "b": body.b, "c": body.c},
    }
    # The cursor must break when the labels, weights, text or areas change: all make the vector.
    digest = hashlib.sha256(
        f"{sorted(labels.pos_found.tolist())}|{sorted(labels.neg_found.tolist())}|{areas}".encode()
    ).hexdigest()[:16]
    opts = resolve_options(ctx, body, {**query.echo, "labels": digest})
    if body.area_id is None:
        # One area takes the index's per-area shard picking; several are filtered on the rows.
        if len(areas) == 1:
            opts.flt.area_id = areas[0]
        else:
            opts.flt.area_ids = areas
    return await answer_search(ctx, query, opts)


def _areas_to_search(project: Project, body: RefineBody) -> list[int]:
    """The project's areas, or `InvalidInput` when it has none or ``area_id`` is not one."""
    areas = project.area_ids
    if not areas:
        raise InvalidInput(
            f"project {project.id} has no areas to search; add some (PATCH /v1/projects/{project.id} with area_ids)"
        )
    if body.area_id is not None and body.area_id not in areas:
        raise InvalidInput(
            f"area {body.area_id} is not one of the project's areas ({', '.join(map(str, areas))}); "
            "leave area_id out to search them all"
        )
    return areas


@dataclass
class _Labelled:
    """The labelled windows found in the index (ids and vectors) and how many were not."""

    pos_found: np.ndarray
    positives: np.ndarray
    neg_found: np.ndarray
    negatives: np.ndarray
    missing: int


def _labelled_vectors(ctx: Context, positive_ids: list[int], negative_ids: list[int]) -> _Labelled:
    """The labelled windows' stored vectors; those missing from the index (an area being
    re-indexed) cannot add a vector."""
    index = ctx.index()
    pos_found, positives = index.vectors_of(positive_ids)
    neg_found, negatives = index.vectors_of(negative_ids)
    missing = len(positive_ids) + len(negative_ids) - len(pos_found) - len(neg_found)
    return _Labelled(pos_found, positives, neg_found, negatives, missing)


async def _refine_query(
    ctx: Context, body: RefineBody, text: str | None, labels: _Labelled, started: float
) -> Query:
    """The Rocchio vector of the text (embedded when given) and the labels, as a search query."""
    warnings = []
    if labels.missing:
        warnings.append(
            f"{labels.missing} labelled window(s) are not in the index and were left out of the query"
        )
    timings: dict[str, float] = {}
    model = None
    text_vector = None
    if text is not None:
        t = time.perf_counter()
        text_vector, info = await ctx.embedder.embed_text(text)
        timings["embed"] = (time.perf_counter() - t) * 1000
        model = info["model"]
    vector = rocchio(text_vector, labels.positives, labels.negatives, body.a, body.b, body.c)
    labelled = len(labels.pos_found) + len(labels.neg_found) > 0
    # Without labels this is the text search: the text's effort and its low-score warning. With
    # labels the vector still holds the text (a > 0 here), which needs the text's effort too.
    return Query(
        vector,
        {},
        started,
        model,
        text=text is not None and not labelled,
        text_effort=text is not None,
        warnings=warnings,
        timings=timings,
    )
