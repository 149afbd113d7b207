"""Projects (a named investigation over areas), their labels, and refine."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from cliprs_http.schemas import ERROR_RESPONSES
from cliprs_search.auth import READ, SEARCH, write
from cliprs_search.context import Context
from cliprs_search.projects_schemas import (
    Label,
    LabelRequest,
    Project,
    ProjectCreate,
    ProjectUpdate,
    RefineBody,
)
from cliprs_search.routes.deps import get_context
from cliprs_search.schemas import SearchResults
from cliprs_search.service import projects

router = APIRouter(tags=["projects"], responses=ERROR_RESPONSES)


@router.post("/v1/projects", status_code=201, dependencies=[Depends(write("project.create"))])
async def create_project(body: ProjectCreate, ctx: Context = Depends(get_context)) -> Project:
    """Create a project over existing areas, with an optional text query."""
    return await projects.create_project(ctx, body)


@router.get("/v1/projects", dependencies=[Depends(READ)])
async def list_projects(ctx: Context = Depends(get_context)) -> list[Project]:
    """Every project with its areas and label counts (``runs`` only on ``GET /v1/projects/{id}``)."""
    return await projects.list_projects(ctx)


@router.get("/v1/projects/{project_id}", dependencies=[Depends(READ)])
async def get_project(project_id: int, ctx: Context = Depends(get_context)) -> Project:
    """One project with its areas, label counts and detection runs (newest first)."""
    return await projects.get_project(ctx, project_id)


@router.patch("/v1/projects/{project_id}", dependencies=[Depends(write("project.update"))])
async def update_project(
    project_id: int, body: ProjectUpdate, ctx: Context = Depends(get_context)
) -> Project:
    """Rename, change or clear the query (``query: null``), or replace the areas."""
    return await projects.update_project(ctx, project_id, body)


@router.delete("/v1/projects/{project_id}", dependencies=[Depends(write("project.delete"))])
async def delete_project(project_id: int, ctx: Context = Depends(get_context)) -> Project:
    """Delete a project with its labels and runs; answers the project as it was."""
    return await projects.delete_project(ctx, project_id)


@router.get("/v1/projects/{project_id}/labels", dependencies=[Depends(READ)])
async def list_labels(
    project_id: int,
    footprint: bool = Query(True, description="Give each window's footprint (GeoJSON Polygon)"),
    ctx: Context = Depends(get_context),
) -> list[Label]:
    """The project's labels, oldest first, with each window's centre and zoom."""
    return await projects.list_labels(ctx, project_id, footprint)


@router.post(
    "/v1/projects/{project_id}/labels", status_code=201, dependencies=[Depends(write("label.create"))]
)
async def add_label(project_id: int, body: LabelRequest, ctx: Context = Depends(get_context)) -> Label:
    """Label a window of the project's areas positive or negative; labelling it again replaces
    the label (a thumbs down after a thumbs up flips it)."""
    return await projects.add_label(ctx, project_id, body)


@router.delete("/v1/projects/{project_id}/labels/{window_id}", dependencies=[Depends(write("label.delete"))])
async def delete_label(project_id: int, window_id: int, ctx: Context = Depends(get_context)) -> Label:
    """Remove a window's label; answers the label as it was."""
    return await projects.delete_label(ctx, project_id, window_id)


@router.post("/v1/projects/{project_id}/refine", dependencies=[Depends(SEARCH)])
async def refine(project_id: int, body: RefineBody, ctx: Context = Depends(get_context)) -> SearchResults:
    """Search the project's areas again with a query built from its text and labels (Rocchio):
    ``normalise(a * text + b * mean(positives) - c * mean(negatives))``, by default a = 1,
    b = 0.75, c = 0.25, over the labelled windows' stored vectors. Without labels it is the text
    search. Takes every search option (``k``, ``cursor``, ``zoom``, ``bbox``, ``min_score``, ...);
    ``area_id`` narrows to one of the project's areas."""
    return await projects.refine(ctx, project_id, body)
