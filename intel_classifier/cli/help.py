"""Typer's --help, in words rather than Python types."""

from __future__ import annotations


def use_plain_help() -> None:
    """--help in words, not Python types: `--server URL`, `PATHS...`, no `<str>` or `{job_id}`.

    Typer renders each parameter's annotation (`<list[Path]>`, `<bool>`) and wraps
    required arguments in braces; its help takes no option for that, so the two
    renderers are replaced here, once, for every command of this program.
    """
    from typer.core import TyperArgument, TyperOption

    def option_type(self: TyperOption, ctx: object) -> str | None:
        if self.is_flag or self.count:
            return None
        return self.metavar or (self.name or "value").upper()

    def argument_usage(self: TyperArgument) -> str:
        name = (self.name or "value").upper()
        return name + ("..." if self.nargs != 1 else "") if self.required else f"[{name}]"

    setattr(TyperOption, "display_type_rich", option_type)  # noqa: B010 (a method, replaced)
    setattr(TyperArgument, "display_type_rich", lambda self, ctx: None)  # noqa: B010
    setattr(TyperArgument, "_usage_display_name", argument_usage)  # noqa: B010
