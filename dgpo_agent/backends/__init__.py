"""Generation backends behind one ``Policy`` interface, and ``load_policy`` to pick one from a spec.

Importing this package is cheap: torch, transformers, openai and vllm load only when a backend is built.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from dgpo_agent.backends.base import Completion, Context, Policy, SamplingParams
from dgpo_agent.errors import DGPOError
from dgpo_agent.protocol import ChatFormat, render_observation, render_prompt
from dgpo_agent.state import Segment

__all__ = ["Completion", "Context", "Policy", "SamplingParams", "load_policy"]

BACKENDS = ("transformers", "vllm")


def load_policy(
    spec: str | Policy,
    *,
    tokenizer: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    backend: str | None = None,
) -> Policy:
    """Build the policy a user named: a ready Policy, a server URL, or a checkpoint path / HF name.

    ``backend`` chooses the local engine for checkpoints (``transformers`` by default, or ``vllm``).
    """
    if not isinstance(spec, str):
        if isinstance(spec, Policy):
            return spec
        raise DGPOError(
            f"cannot use {type(spec).__name__} as a policy: pass a Policy, a checkpoint path, a model name or a URL"
        )
    if spec.startswith(("http://", "https://")):
        from dgpo_agent.backends.openai_server import OpenAICompletionsPolicy

        return OpenAICompletionsPolicy(spec, tokenizer=tokenizer)
    if backend == "vllm":
        from dgpo_agent.backends.vllm_engine import VLLMPolicy

        return VLLMPolicy(spec, tokenizer=tokenizer, **({"dtype": dtype} if dtype else {}))
    if backend not in (None, "transformers"):
        raise DGPOError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    from dgpo_agent.backends.transformers import TransformersPolicy

    return TransformersPolicy.from_pretrained(spec, device=device, dtype=dtype, tokenizer=tokenizer)


# ----------------------------------------------------------------------------- shared by token backends


class TokenPolicy:
    """What every backend that continues token ids shares: the prompt with its ids, encoding of
    environment text, and generation of every context that fits the model's window. A context that
    does not fit (a long passage, many turns) gets an ``overflow`` completion and ends alone; the
    other contexts of the batch go on."""

    tokenizer: Any

    def prompt(self, question: str, fmt: ChatFormat = ChatFormat()) -> Segment:
        text = render_prompt(question, self.tokenizer, fmt)
        return {"role": "prompt", "text": text, "ids": self.encode(text)}

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def observe(self, text: str, after: Segment, fmt: ChatFormat) -> Segment:
        """The environment's segment; a model turn whose last id is a special token (its end-of-turn)
        has closed itself, so a new user turn does not close it again."""
        last = (after.get("ids") or [None])[-1]
        closed = self.tokenizer.decode([last]) if last is not None and last in self.tokenizer.all_special_ids else None
        text = render_observation(text, fmt, self.tokenizer, closed)
        return {"role": "env", "text": text, "ids": self.encode(text)}

    def window(self) -> int | None:
        """The model's context window in tokens (None: unknown, never checked)."""
        return None

    def continue_rows(self, rows: list[list[int]], params: SamplingParams) -> list[Completion]:
        """Continue every id row, in one batch (each backend's own engine)."""
        raise NotImplementedError

    def generate(self, contexts: Sequence[Context], params: SamplingParams) -> list[Completion]:
        """Continue every context in one batch, except those the window cannot hold with
        ``max_new_tokens`` more: they get an overflow completion (no text), never a truncated context."""
        if not contexts:
            return []
        rows = [context_ids(c, self.encode) for c in contexts]
        window = self.window()
        fits = [window is None or len(row) + params.max_new_tokens <= window for row in rows]
        kept = [row for row, ok in zip(rows, fits) if ok]
        done = iter(self.continue_rows(kept, params) if kept else [])
        return [next(done) if ok else Completion(text="", token_ids=[], logprobs=[], overflow=True) for ok in fits]


def context_ids(context: Context, encode: Callable[[str], list[int]]) -> list[int]:
    """The token ids a token backend continues: each segment's own ids, encoding only text-only segments.

    Model segments carry the ids the model sampled; re-tokenising their text could change them.
    """
    ids: list[int] = []
    for segment in context.segments:
        ids.extend(segment["ids"] if segment["ids"] is not None else encode(segment["text"]))
    return ids
