"""Terminal rendering of agent steps (used by ``dgpo-agent ask``): thoughts, searches with their
documents, and the answer, never raw protocol tags."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from dgpo_agent.state import Step

console = Console()


def print_step(step: Step) -> None:
    """Print one step as it streams from the graph."""
    kind = step["kind"]
    if kind == "think":
        console.print(f"[dim]think:[/dim] {escape(step['text'])}")
    elif kind == "search":
        console.print(f"[cyan]search:[/cyan] {escape(step['query'])}")
        for i, doc in enumerate(step["docs"], 1):
            console.print(f"  [cyan]{i}.[/cyan] [bold]{escape(doc['title'])}[/bold] {escape(doc['text'])} [dim]({doc['id']})[/dim]")
    elif kind == "invalid":
        console.print(f"[yellow]invalid action ({step['reason']}):[/yellow] {escape(step['text'][:200])}")
    elif kind == "answer":
        console.print(Panel(escape(step["answer"]), title="answer", expand=False))
