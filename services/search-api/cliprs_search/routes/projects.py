"""Projects (a named investigation over areas), their labels, and refine."""

from __future__ import annotations

from fastapi import Query

from cliprs_search.access import READ, SEARCH, WRITE, audited
from cliprs_search.routes.deps import CtxDep, api_router
from cliprs_search.schemas.projects import (
    Label,
    LabelRequest,
    Project,
    ProjectCreate,
    ProjectUpdate,
    RefineBody,
)
from cliprs_search.schemas.search import SearchResults
from cliprs_search.service import projects

router = api_router("projects", READ)
writes = api_router("projects", WRITE)
# Refine is a search: it spends the search bucket.
searches = api_router("projects", SEARCH)


@writes.post("/projects", status_code=201, dependencies=[audited("project.create")])
async def create_project(body: ProjectCreate, ctx: CtxDep) -> Project:
    """Create a project over existing areas, with an optional text query."""
    return await projects.create_project(ctx, body)


@router.get("/projects")
async def list_projects(ctx: CtxDep) -> list[Project]:
    """Every project with its areas and label counts (``runs`` only on ``GET /v1/projects/{id}``)."""
    return await projects.list_projects(ctx)


@router.get("/projects/{project_id}")
async def get_project(project_id: int, ctx: CtxDep) -> Project:
    """One project with its areas, label counts and detection runs (newest first)."""
    return await projects.get_project(ctx, project_id)


@writes.patch("/projects/{project_id}", dependencies=[audited("project.update")])
async def update_project(project_id: int, body: ProjectUpdate, ctx: CtxDep) -> Project:
    """Rename, change or clear the query (``query: null``), or replace the areas."""
    return await projects.update_project(ctx, project_id, body)


@writes.delete("/projects/{project_id}", dependencies=[audited("project.delete")])
async def delete_project(project_id: int, ctx: CtxDep) -> Project:
    """Delete a project with its labels and runs; answers the project as it was."""
    return await projects.delete_project(ctx, project_id)


@router.get("/projects/{project_id}/labels")
async def list_labels(
    project_id: int,
    ctx: CtxDep,
    footprint: bool = Query(True, description="Give each window's footprint (GeoJSON Polygon)"),
) -> list[Label]:
    """The project's labels, oldest first, with each window's centre and zoom."""
    return await projects.list_labels(ctx, project_id, footprint)


@writes.post("/projects/{project_id}/labels", status_code=201, dependencies=[audited("label.create")])
async def add_label(project_id: int, body: LabelRequest, ctx: CtxDep) -> Label:
    """Label a window of the project's areas positive or negative; labelling it again replaces
    the label (a thumbs down after a thumbs up flips it)."""
    return await projects.add_label(ctx, project_id, body)


@writes.delete("/projects/{project_id}/labels/{window_id}", dependencies=[audited("label.delete")])
async def delete_label(project_id: int, window_id: int, ctx: CtxDep) -> Label:
    """Remove a window's label; answers the label as it was."""
    return await projects.delete_label(ctx, project_id, window_id)


@searches.post("/projects/{project_id}/refine")
async def refine(project_id: int, body: RefineBody, ctx: CtxDep) -> SearchResults:
    """Search the project's areas again with a query built from its text and labels (Rocchio):
    ``normalise(a * text + b * mean(positives) - c * mean(negatives))``, by default a = 1,
    b = 0.75, c = 0.25, over the labelled windows' stored vectors. Without labels it is the text
    search. Takes every search option (``k``, ``cursor``, ``zoom``, ``bbox``, ``min_score``, ...);
    ``area_id`` narrows to one of the project's areas."""
    return await projects.refine(ctx, project_id, body)
