import os
import sys

from cliprs_tools.devstack import _hub_reachable

if "HF_HUB_OFFLINE" not in os.environ and not _hub_reachable():
    # Decided before transformers is imported (it reads this once); without it a model that is
    # not cached spends ~30 s in retries before failing or falling back.
    os.environ["HF_HUB_OFFLINE"] = "1"

from cliprs_tools.finetune.cli import main

sys.exit(main())
