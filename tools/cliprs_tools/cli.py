"""One way to run a command line of the tools: a pydantic-settings `CliApp` over a settings class,
bad options and domain errors reported on one line with exit status 2, a missing input file
with exit status 1."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from cliprs.errors import ClipRSError

S = TypeVar("S", bound=BaseSettings)


def cli_config(env_prefix: str, prog: str, **extra: object) -> SettingsConfigDict:
    """The settings config of a command line: every option also an ``{env_prefix}*`` variable,
    kebab-case flags, ``--flag/--no-flag`` booleans, ``prog`` in the usage line; ``extra``
    adds to or overrides any of it."""
    config = SettingsConfigDict(
        env_prefix=env_prefix,
        extra="ignore",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_prog_name=prog,
    )
    return SettingsConfigDict(**{**config, **extra})


def describe(exc: ValidationError) -> str:
    """A settings validation error as one line naming the options: ``--batch-size: ...``."""
    return "; ".join(
        f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}" for e in exc.errors()
    )


def run_cli(settings_cls: type[S], run: Callable[[S], object], argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the process's arguments) into ``settings_cls``, call ``run``; 0 or 2."""
    try:
        settings = CliApp.run(settings_cls, cli_args=list(sys.argv[1:] if argv is None else argv))
        run(settings)
    except ValidationError as exc:
        print(f"error: {describe(exc)}", file=sys.stderr)
        return 2
    except ClipRSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
