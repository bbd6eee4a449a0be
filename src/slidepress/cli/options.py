"""Typer options generated from the declarative option specs (slidepress.jobs.options): the
same flag, default, help and environment variable wherever an option appears (`encode` and
`batch ... encode`, `compress` and `batch ... compress`, `serve`).

A command declares its own parameters and takes the spec's as one dict:

    @with_options(ENCODE.for_target(CLI))
    def encode(slides: SlidesArg, output: OutputOpt, *, options: dict[str, Any]) -> None: ...

typer reads the command's signature, so the decorator gives the command a signature with one
typer option per spec option after its own parameters (typer builds click parameters from
`inspect.signature`, which honours `__signature__`). An option's old spellings are hidden
options of their own, folded into its value.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer

from ..errors import UsageError
from ..jobs.options import JobSpec, Option


def flag(option: Option) -> str:
    """The option's spelling on the command line."""
    return option.flag or "--" + option.name.replace("_", "-")


def annotation(option: Option) -> Any:
    """`Annotated[type, typer.Option(...)]` for one option (its default goes on the
    parameter)."""
    kind = option.type | None if option.optional else option.type
    # a bool without an explicit spelling gets typer's --name/--no-name pair
    decls = (flag(option),) if option.flag or option.type is not bool else ()
    return Annotated[
        kind,
        typer.Option(
            *decls, help=option.describe(), envvar=option.envvar,
            show_envvar=bool(option.envvar), metavar=option.metavar,
        ),
    ]  # fmt: skip


def _alias_name(option: Option, alias: str) -> str:
    return f"{option.name}__{alias.lstrip('-').replace('-', '_')}"


def parameters(options: Sequence[Option]) -> list[inspect.Parameter]:
    """The typer parameters of `options`, each followed by its hidden old spellings."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    out = []
    for o in options:
        out.append(inspect.Parameter(o.name, keyword, default=o.default, annotation=annotation(o)))
        for alias in o.aliases:
            old = typer.Option(alias, hidden=True, help=f"Old name of {flag(o)}.")
            kind = Annotated[o.type | None, old]
            out.append(inspect.Parameter(_alias_name(o, alias), keyword, default=None,
                                         annotation=kind))  # fmt: skip
    return out


def _fold_aliases(
    options: Sequence[Option], kwargs: dict[str, Any], ctx: typer.Context
) -> dict[str, Any]:
    """Pop the spec's values out of `kwargs`; an old spelling's value stands for its option
    (given both, they must agree)."""
    values = {}
    for o in options:
        values[o.name] = kwargs.pop(o.name)
        for alias in o.aliases:
            old = kwargs.pop(_alias_name(o, alias))
            if old is None:
                continue
            source = ctx.get_parameter_source(o.name)
            given = source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")
            if given and values[o.name] != old:
                raise UsageError(f"give {flag(o)} or {alias} (its old name), not both")
            values[o.name] = old
    return values


# added where a command has no typer.Context parameter of its own
_CONTEXT = inspect.Parameter(
    "typer_context", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context
)


def with_options(options: Sequence[Option]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the command's `options` parameter becomes one typer option per spec option
    (after the command's own parameters); the command receives their values as a dict, by
    option name, aliases folded in."""
    options = list(options)

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name != "options"]
        # the click context tells a flag the user gave from a default (typer passes it to the
        # one parameter annotated typer.Context: the command's own, else one added here)
        ctx_name = next((p.name for p in own if p.annotation is typer.Context), None)
        added = [] if ctx_name else [_CONTEXT]

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            from .common import guarded  # common declares its shared options with `annotation`

            ctx = kwargs[ctx_name] if ctx_name else kwargs.pop(_CONTEXT.name)
            values = guarded(lambda: _fold_aliases(options, kwargs, ctx))
            return fn(*args, options=values, **kwargs)

        command.__signature__ = sig.replace(parameters=[*own, *added, *parameters(options)])
        return command

    return deco


def build_job(spec: JobSpec, values: dict[str, Any], **extra: Any) -> Any:
    """The pipeline job for option values from the command line: ranges checked here (a
    one-line error naming the option), then the job built from the same plain dict the
    service and the Dask runner hand over (`pipeline.batch.job_from_dict`)."""
    from ..pipeline.batch import job_from_dict

    spec.check(values)
    return job_from_dict(spec.job_dict(values, **extra))
