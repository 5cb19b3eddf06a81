"""Terminal rendering of agent steps (used by ``dgpo-agent ask``): thoughts, searches with their
documents, and the answer. Whatever a passage or a model wrote, the terminal shows text: never raw
protocol tags, chat special tokens, control characters (a passage's escape sequence cannot clear the
screen) or Rich markup, and never more than ``SHOWN`` characters of one field, so rendering stays fast
however long an unbroken word is."""

from __future__ import annotations

import re

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from dgpo_agent.protocol import strip_tags
from dgpo_agent.state import Step

console = Console()
SHOWN = 1000  # characters of one field a person is shown; `ask --json` gives everything
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(text: str, limit: int = SHOWN) -> str:
    """``text`` as a terminal may show it: protocol tags and control characters gone, cut at ``limit``
    characters, Rich markup escaped."""
    text = strip_tags(_CONTROL.sub(" ", str(text)))
    if len(text) > limit:
        text = text[:limit] + "…"
    return escape(text)


def print_step(step: Step) -> None:
    """Print one step as it streams from the graph."""
    kind = step["kind"]
    if kind == "think":
        console.print(f"[dim]think:[/dim] {clean(step['text'])}", overflow="fold")
    elif kind == "search":
        console.print(f"[cyan]search:[/cyan] {clean(step['query'])}", overflow="fold")
        for i, doc in enumerate(step["docs"], 1):
            console.print(f"  [cyan]{i}.[/cyan] [bold]{clean(doc['title'])}[/bold] {clean(doc['text'])} [dim]({clean(doc['id'])})[/dim]", overflow="fold")
    elif kind == "invalid":
        console.print(f"[yellow]invalid action ({clean(step['reason'])}):[/yellow] {clean(step['text'], 200)}", overflow="fold")
    elif kind == "answer":
        console.print(Panel(clean(step["answer"]), title="answer", expand=False))
