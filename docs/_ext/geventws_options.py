"""``.. geventws-options:: SCOPE``: the options table of :mod:`geventws.options`, rendered.

The table in ``geventws/options.py`` is the one source of every option's name, default,
flag and documentation; this directive renders the options of one scope as a
definition list, so the reference can't drift from the code.
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive
from docutils.statemachine import StringList


def _default(value: Any) -> str:
    if value == 2**20:
        return "``1048576`` (1 MiB)"
    return f"``{value!r}``"


class OptionsDirective(Directive):
    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        from geventws.options import OPTIONS, keyword

        scope = self.arguments[0]
        lines: list[str] = []
        for option in OPTIONS:
            if option.scope != scope:
                continue
            flag = ""
            if option.cli is not None:
                metavar = f" {option.cli.metavar}" if option.cli.metavar else ""
                repeat = " (repeatable)" if option.cli.repeatable else ""
                flag = f", ``{option.flag}{metavar}``{repeat}"
            lines.append(f"``{keyword(option)}``{flag}")
            lines.append(f"    *{option.type}*, default {_default(option.default)}.")
            lines.append(f"    {option.doc}")
            lines.append("")
        node = nodes.container()
        self.state.nested_parse(StringList(lines, source="geventws/options.py"), 0, node)
        return node.children


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("geventws-options", OptionsDirective)
    return {"parallel_read_safe": True}
