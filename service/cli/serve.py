"""``infergate serve``: one flag per ``Settings`` field, generated from the model, so a new setting
is a new flag with no code here. Only flags given on the command line reach ``Settings``: the rest
fall back to ``INFERGATE_*`` variables (read by pydantic-settings) and then to the defaults.
"""

from __future__ import annotations

import inspect
import re
import types
from pathlib import Path
from typing import Literal, Union, get_args, get_origin

import typer
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from typer._click.core import ParameterSource

from service.settings import Settings

ENV_PREFIX = str(Settings.model_config.get("env_prefix", ""))
# Flags kept from before the flags were generated, beside each field's own ``--kebab-case``.
EXTRA_FLAGS: dict[str, tuple[str, ...]] = {
    "startup_models": ("--load-model",),
    "api_keys_file": ("--api-keys",),  # the spelling the security issue promised
}
_SIMPLE_TYPES = (str, int, float, bool, Path)
_SECTION = re.compile(r"^\s*#\s*-+\s*(?P<title>[^-].*?)\s*-+\s*$")
_FIELD_LINE = re.compile(r"^\s{4}(?P<name>[a-z_][a-z0-9_]*)\s*:")


def flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def sections() -> dict[str, str]:
    """Field name -> the ``# --- title ---`` comment above it in settings.py (the help panel)."""
    try:
        source = inspect.getsource(Settings)
    except (OSError, TypeError):
        return {}
    sections: dict[str, str] = {}
    title = "Options"
    for line in source.splitlines():
        if match := _SECTION.match(line):
            title = match["title"].capitalize()
        elif (match := _FIELD_LINE.match(line)) and match["name"] in Settings.model_fields:
            sections[match["name"]] = title
    return sections


def _cli_type(annotation: object) -> object:
    """The field's type as typer takes it: Optional, Literal and list kept, the rest as str.

    Types typer cannot parse (e.g. a future ``SecretStr``) arrive as text and pydantic converts
    them, as it does for the environment.
    """
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        present = [arg for arg in args if arg is not type(None)]
        return _cli_type(present[0]) if len(present) == 1 else str
    if origin is list and len(args) == 1:
        return list[_cli_type(args[0])]  # type: ignore[misc]
    if origin is Literal or annotation in _SIMPLE_TYPES:
        return annotation
    return str


def _is_list(field: FieldInfo) -> bool:
    return get_origin(_cli_type(field.annotation)) is list


def _metavar(field: FieldInfo) -> str | None:
    """Lists read as their item type (``<str>``) rather than ``<list[str]>``."""
    cli_type = _cli_type(field.annotation)
    if get_origin(cli_type) is not list:
        return None
    (item,) = get_args(cli_type)
    return f"<{getattr(item, '__name__', 'str')}>"


def _is_flag(field: FieldInfo) -> bool:
    return _cli_type(field.annotation) is bool


def _option(name: str, field: FieldInfo, panel: str) -> inspect.Parameter:
    """One keyword parameter whose ``typer.Option`` shows the field's help, default and env var."""
    decls = [f"{flag(name)}/--no-{flag(name)[2:]}" if _is_flag(field) else flag(name)]
    default = field.get_default(call_default_factory=True)
    help_text = (field.description or name.replace("_", " ")).rstrip(".")
    if _is_list(field):
        help_text += " (repeatable, or comma-separated)"
    option = typer.Option(
        list(default) if isinstance(default, list) else default,
        *EXTRA_FLAGS.get(name, ()),  # first, so a narrow --help still shows the promised name
        *decls,
        help=help_text,
        envvar=f"{ENV_PREFIX}{name.upper()}",
        show_envvar=True,
        show_default=default is not None and default != [],
        metavar=_metavar(field),
        rich_help_panel=panel,
    )
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=_cli_type(field.annotation)
    )


def _given_settings(context: typer.Context) -> dict[str, object]:
    """The flags typed on the command line, as ``Settings`` fields (lists split at commas)."""
    given: dict[str, object] = {}
    for name, value in context.params.items():
        if context.get_parameter_source(name) is not ParameterSource.COMMANDLINE:
            continue
        if isinstance(value, list | tuple):
            value = [part.strip() for item in value for part in str(item).split(",")]
            value = [part for part in value if part]
        given[name] = value
    return given


def _problem(location: tuple[int | str, ...], message: str) -> str:
    """``--http-port (or INFERGATE_HTTP_PORT): message``: the value came from one of the two."""
    if not location or str(location[0]) not in Settings.model_fields:
        return message
    name = str(location[0])
    return f"{flag(name)} (or {ENV_PREFIX}{name.upper()}): {message}"


def settings_from_context(context: typer.Context) -> Settings:
    """``Settings`` from the typed flags and the environment; a bad value is a usage error."""
    try:
        return Settings.model_validate(_given_settings(context))
    except ValidationError as error:
        problems = [_problem(issue["loc"], issue["msg"]) for issue in error.errors()]
        raise typer.BadParameter("; ".join(problems)) from error


def serve(ctx: typer.Context, **_flags: object) -> None:
    """Serve the model repository over KServe v2 REST and gRPC.

    Every option is also an INFERGATE_* variable; a flag given here wins over the variable.
    """
    from service.processes.launch import run

    run(settings_from_context(ctx))


def _serve_signature() -> inspect.Signature:
    panels = sections()
    options = [
        _option(name, field, panels.get(name, "Options"))
        for name, field in Settings.model_fields.items()
    ]
    context = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return inspect.Signature([context.replace(annotation=typer.Context), *options])


serve.__signature__ = _serve_signature()  # type: ignore[attr-defined]
