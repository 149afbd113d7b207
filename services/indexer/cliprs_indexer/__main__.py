"""Indexer command line: ``python -m cliprs_indexer rebuild|delete-area|gc|show``.

The same operations as the Celery tasks, run in this process (handy for operators and for
recovering an index from the stored vector chunks alone). Database, Redis and data folder come
from ``CLIPRS_*``, index tuning from ``INDEXER_*``.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import (
    CliApp,
    CliPositionalArg,
    CliSubCommand,
    SettingsConfigDict,
    SettingsError,
    get_subcommand,
)

from cliprs.errors import ClipRSError
from cliprs.manifest import load_manifest
from cliprs.settings import CoreSettings
from cliprs_indexer.maintenance import delete_area, garbage_collect, rebuild
from cliprs_indexer.settings import IndexerSettings


class Rebuild(BaseModel):
    """Rebuild shards from the stored vector chunks and publish them."""

    area: list[int] | None = Field(None, description="only this area (repeatable); default all")

    def run(self, core: CoreSettings, settings: IndexerSettings) -> dict[str, Any]:
        report = rebuild(core, settings, self.area)
        garbage_collect(core, settings)
        return report.__dict__


class DeleteArea(BaseModel):
    """Remove an area's vectors from the index, then its rows."""

    area: CliPositionalArg[int] = Field(description="id of the area to delete")

    def run(self, core: CoreSettings, settings: IndexerSettings) -> dict[str, Any]:
        out = delete_area(core, self.area).__dict__
        garbage_collect(core, settings)
        return out


class Gc(BaseModel):
    """Remove index versions that no searcher holds."""

    def run(self, core: CoreSettings, settings: IndexerSettings) -> dict[str, Any]:
        return garbage_collect(core, settings).as_dict()


class Show(BaseModel):
    """Print the current manifest."""

    def run(self, core: CoreSettings, settings: IndexerSettings) -> dict[str, Any]:
        manifest = load_manifest(core.index_dir)
        return json.loads(manifest.to_json()) if manifest else {"version": None}


class IndexerCli(BaseModel):
    """Index upkeep from the command line; prints the result as JSON."""

    model_config = SettingsConfigDict(cli_prog_name="python -m cliprs_indexer", cli_kebab_case=True)

    rebuild: CliSubCommand[Rebuild] = Field(description=Rebuild.__doc__)
    delete_area: CliSubCommand[DeleteArea] = Field(description=DeleteArea.__doc__)
    gc: CliSubCommand[Gc] = Field(description=Gc.__doc__)
    show: CliSubCommand[Show] = Field(description=Show.__doc__)


def describe(exc: ValidationError) -> str:
    """A validation error as one line naming the options: ``--area: ...``."""
    parts = []
    for err in exc.errors():
        option = next((p for p in reversed(err["loc"]) if isinstance(p, str)), "")
        parts.append(f"--{option.replace('_', '-')}: {err['msg']}")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; 0 on success, 1 when the operation fails, 2 on a bad command line."""
    try:
        cli = CliApp.run(IndexerCli, cli_args=sys.argv[1:] if argv is None else argv)
        command = get_subcommand(cli, cli_exit_on_error=False)
    except ValidationError as exc:
        print(f"error: {describe(exc)}", file=sys.stderr)
        return 2
    except SettingsError as exc:  # no subcommand given
        print(f"error: {str(exc).removeprefix('Error: ')}; see --help", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        out = command.run(CoreSettings(), IndexerSettings())
    except ClipRSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
