"""A model behind an OpenAI-compatible server (``vllm serve``, ``dgpo-agent serve``), text in and out.

It uses the **completions** endpoint, never chat: the agent continues one assistant turn as raw text,
while chat completions would open a new message on every call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from dgpo_agent.backends.base import Completion, Context, SamplingParams
from dgpo_agent.backends.vllm_engine import sampling_kwargs
from dgpo_agent.errors import DGPOError
from dgpo_agent.protocol import ChatFormat, render_observation, render_prompt
from dgpo_agent.state import Segment

# Request fields of the standard completions API; the other vLLM sampling fields travel in extra_body.
_STANDARD_FIELDS = ("temperature", "top_p", "max_tokens", "stop", "seed")


class OpenAICompletionsPolicy:
    """A text-only policy: ``encode`` returns None and completions carry no token ids.

    ``tokenizer`` (a path or name) only renders the chat template locally; it defaults to the served
    model when that is a local checkpoint directory, and without one the prompt is the plain
    instructions. ``model=None`` uses the first model the server lists.
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        tokenizer: str | None = None,
        api_key: str = "EMPTY",
        timeout: float = 60,
    ) -> None:
        from openai import OpenAI

        self.base_url = _api_root(base_url)
        self.client = OpenAI(base_url=self.base_url, api_key=api_key, timeout=timeout)
        self.model = model or self._first_model()
        # A server on this machine names its model by path (`vllm serve DIR`, `dgpo-agent serve DIR`):
        # that checkpoint's tokenizer renders the chat template the model was trained with.
        if tokenizer is None and (Path(self.model) / "tokenizer_config.json").is_file():
            tokenizer = self.model
        self.tokenizer = _load_tokenizer(tokenizer) if tokenizer else None

    def prompt(self, question: str, fmt: ChatFormat = ChatFormat()) -> Segment:
        return {"role": "prompt", "text": render_prompt(question, self.tokenizer, fmt), "ids": None}

    def encode(self, text: str) -> None:
        return None

    def observe(self, text: str, after: Segment, fmt: ChatFormat) -> Segment:
        """Rendered with the local tokenizer's template; the server drops a model's end-of-turn token
        from its text, so a user turn always closes the model's turn."""
        return {"role": "env", "text": render_observation(text, fmt, self.tokenizer), "ids": None}

    def generate(self, contexts: Sequence[Context], params: SamplingParams) -> list[Completion]:
        """One request with every context as a prompt; choices are matched back by their index."""
        if not contexts:
            return []
        fields = sampling_kwargs(params)
        del fields["logprobs"]  # text-only: no ids to attach log-probs to
        standard = {k: v for k in _STANDARD_FIELDS if (v := fields.pop(k)) is not None}
        response = self._request(
            self.client.completions.create,
            model=self.model,
            prompt=[c.text for c in contexts],
            extra_body=fields,
            **standard,
        )
        choices = sorted(response.choices, key=lambda c: c.index)
        if len(choices) != len(contexts):
            raise DGPOError(
                f"the model server at {self.base_url} returned {len(choices)} completions for {len(contexts)} "
                "prompts: check that it is an OpenAI-compatible completions server"
            )
        return [Completion(text=_with_stop(c, params.stop)) for c in choices]

    def _first_model(self) -> str:
        models = self._request(self.client.models.list).data
        if not models:
            raise DGPOError(f"the model server at {self.base_url} serves no model: pass model= or start it with one")
        return models[0].id

    def _request(self, call: Callable[..., Any], **kwargs: Any) -> Any:
        """Turn transport and API failures into one-line errors that say what to do."""
        import openai

        try:
            return call(**kwargs)
        except openai.APIConnectionError as err:
            raise DGPOError(
                f"cannot reach a model server at {self.base_url}: start one with `dgpo-agent serve <checkpoint>` "
                "or `vllm serve <checkpoint>`, or fix the URL"
            ) from err
        except openai.APIStatusError as err:
            raise DGPOError(
                f"the model server at {self.base_url} refused the request (HTTP {err.status_code}): {err.message}"
            ) from err


def _api_root(url: str) -> str:
    """Accept ``http://host:8000`` as well as ``http://host:8000/v1``."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def _load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise DGPOError(
            f"tokenizer '{name}' not found: pass a checkpoint directory or a Hugging Face model name"
        ) from err


def _with_stop(choice: Any, stop: Sequence[str]) -> str:
    """The choice's text ending with the stop string that fired, even if the server stripped it.

    vLLM names the matched string in ``stop_reason`` (None for EOS, an int for a stop token).
    """
    text, fired = choice.text, getattr(choice, "stop_reason", None)
    if choice.finish_reason == "stop" and isinstance(fired, str) and fired in stop and not text.endswith(fired):
        return text + fired
    return text
