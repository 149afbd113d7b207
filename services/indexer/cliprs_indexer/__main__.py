"""Indexer command line: ``python -m cliprs_indexer rebuild|delete-area|gc|show``.

The same operations as the Celery tasks, run in this process (handy for operators and for
recovering an index from the stored vector chunks alone).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from cliprs.errors import ClipRSError
from cliprs.manifest import load_manifest
from cliprs.settings import CoreSettings
from cliprs_indexer.maintenance import delete_area, garbage_collect, rebuild
from cliprs_indexer.settings import IndexerSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cliprs_indexer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("rebuild", help="rebuild shards from the stored vector chunks and publish them")
    p.add_argument("--area", type=int, action="append", help="only this area (repeatable); default all")
    p = sub.add_parser("delete-area", help="remove an area's vectors from the index, then its rows")
    p.add_argument("area", type=int)
    sub.add_parser("gc", help="remove index versions that no searcher holds")
    sub.add_parser("show", help="print the current manifest")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    core, settings = CoreSettings(), IndexerSettings()
    try:
        if args.command == "rebuild":
            report = rebuild(core, settings, args.area)
            garbage_collect(core, settings)
            out = report.__dict__
        elif args.command == "delete-area":
            out = delete_area(core, args.area).__dict__
            garbage_collect(core, settings)
        elif args.command == "gc":
            out = garbage_collect(core, settings).as_dict()
        else:
            manifest = load_manifest(core.index_dir)
            out = json.loads(manifest.to_json()) if manifest else {"version": None}
    except ClipRSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
