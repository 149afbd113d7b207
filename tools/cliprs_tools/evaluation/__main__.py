import sys

from cliprs_tools.hub import prefer_offline_hub

prefer_offline_hub()  # before transformers is imported

from cliprs_tools.evaluation.cli import main  # noqa: E402 (after the Hub decision)

sys.exit(main())
