"""The Gradio chat demo (``dgpo-agent chat``): the agent's steps live, its answer as the reply.

Every think, search (with its query) and set of retrieved documents becomes a collapsible *thought*
message (a Gradio message with a metadata title and status), streamed while the graph runs; the
answer is the plain reply. Text passes through ``strip_tags``, so raw protocol tags never show.
The step → message conversion is pure (plain message dicts) so it is testable without Gradio.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

from dgpo_agent.agent import CompactSearchAgent
from dgpo_agent.errors import DGPOError
from dgpo_agent.protocol import strip_tags
from dgpo_agent.state import Doc, Step

Message = dict[str, Any]  # Gradio's messages format: role, content, optional metadata

WORKING = "⏳ Working…"
NO_ANSWER = "The agent stopped without an answer: try more turns or rephrase the question."


def _thought(key: str, title: str, content: str, parent: str | None = None) -> Message:
    metadata = {"title": title, "id": key, "status": "done"}
    if parent is not None:
        metadata["parent_id"] = parent
    return {"role": "assistant", "content": content, "metadata": metadata}


def _docs_markdown(docs: Sequence[Doc]) -> str:
    return "\n\n".join(f"**{i}. {strip_tags(d['title'])}** {strip_tags(d['text'])}" for i, d in enumerate(docs, 1))


def step_messages(step: Step, index: int) -> list[Message]:
    """The chat messages for one step; ``index`` (its position in the run) keeps message ids unique."""
    kind = step["kind"]
    if kind == "think":
        return [_thought(f"think-{index}", "💭 Thinking", strip_tags(step["text"]))]
    if kind == "search":
        query, docs = strip_tags(step["query"]), step["docs"]
        search = _thought(f"search-{index}", f"🔍 Searching: {query}", f"Query: {query}")
        found = _thought(f"docs-{index}", f"📄 Retrieved {len(docs)} documents", _docs_markdown(docs), f"search-{index}")
        return [search, found]
    if kind == "invalid":
        text = strip_tags(step["text"]) or "(no text)"
        return [_thought(f"invalid-{index}", f"⚠️ Invalid action ({step['reason']})", text)]
    return [{"role": "assistant", "content": strip_tags(step["answer"])}]


def conversation(steps: Sequence[Step], finished: bool) -> list[Message]:
    """The reply so far: one message list for all steps, then a pending placeholder while the graph
    still runs, or a note when it finished without an answer."""
    messages = [m for i, step in enumerate(steps) for m in step_messages(step, i)]
    if not finished:
        messages.append({"role": "assistant", "content": "", "metadata": {"title": WORKING, "status": "pending"}})
    elif not any(step["kind"] == "answer" for step in steps):
        messages.append({"role": "assistant", "content": NO_ANSWER})
    return messages


class AgentPool:
    """One agent per UI setting (max turns, top-k, temperature), all sharing the loaded policy and store."""

    def __init__(self, agent: CompactSearchAgent) -> None:
        self.base = agent
        self.agents: dict[tuple[int, int, float], CompactSearchAgent] = {}

    def get(self, max_turns: int, top_k: int, temperature: float) -> CompactSearchAgent:
        key = (int(max_turns), int(top_k), float(temperature))
        if key not in self.agents:
            sampling = self.base.config.sampling
            self.agents[key] = CompactSearchAgent(
                self.base.policy, self.base.retriever, max_turns=key[0], top_k=key[1], temperature=key[2],
                top_p=sampling.top_p, max_new_tokens=sampling.max_new_tokens, seed=sampling.seed,
            )  # fmt: skip
        return self.agents[key]


def build_demo(agent: CompactSearchAgent, examples: Sequence[str] = (), concurrency_limit: int | None = 1) -> Any:
    """A ``gr.ChatInterface`` over the agent. Its API endpoint is ``/respond`` (message, max_turns,
    top_k, temperature). ``concurrency_limit`` bounds parallel runs (1 queues them: one model, few cores)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    pool = AgentPool(agent)

    def respond(message: str, history: list, max_turns: int, top_k: int, temperature: float) -> Iterator[list[Message]]:
        steps: list[Step] = []
        yield conversation(steps, finished=False)
        try:
            for step in pool.get(max_turns, top_k, temperature).stream(message):
                steps.append(step)
                yield conversation(steps, finished=False)
        except DGPOError as err:
            raise gr.Error(str(err)) from err
        yield conversation(steps, finished=True)

    config = agent.config
    settings = [
        gr.Slider(1, 8, value=config.max_turns, step=1, label="Max turns"),
        gr.Slider(1, 10, value=config.top_k, step=1, label="Top-k documents"),
        gr.Slider(0.0, 1.5, value=config.sampling.temperature, step=0.1, label="Temperature (0 = greedy)"),
    ]
    return gr.ChatInterface(
        respond,
        chatbot=gr.Chatbot(label="DGPO agent", allow_tags=False, height=560),
        additional_inputs=settings,
        additional_inputs_accordion=gr.Accordion("Settings", open=False),
        examples=[[q, config.max_turns, config.top_k, config.sampling.temperature] for q in examples] or None,
        cache_examples=False,
        title="DGPO compact search agent",
        description="Thinks, searches the store, reads, answers. Open a step to see its query or documents.",
        concurrency_limit=concurrency_limit,
    )


def launch(
    agent: CompactSearchAgent,
    examples: Sequence[str] = (),
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    block: bool = True,
    concurrency_limit: int | None = 1,
) -> Any:
    """Serve the demo on ``host`` (loopback unless told otherwise), with no public share link by default."""
    demo = build_demo(agent, examples, concurrency_limit)
    demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block, quiet=not block, ssr_mode=False)
    return demo
