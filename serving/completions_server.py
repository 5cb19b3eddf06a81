"""``dgpo-agent serve``: a checkpoint behind an OpenAI-compatible completions server.

On a CUDA GPU with vLLM installed it execs ``vllm serve``; on CPU it runs this module's small FastAPI
app over ``TransformersPolicy``. Both answer ``/v1/models`` and ``/v1/completions`` (prompt, stop,
max_tokens, temperature, top_p, seed, vLLM's ``include_stop_str_in_output``), which is everything
``OpenAICompletionsPolicy`` (``CompactSearchAgent("http://…")``) sends. Requests are served one at a
time: the agent already batches its contexts into one request, and a CPU has no cores to spare.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dgpo_agent.backends.base import Context, Policy, SamplingParams
from dgpo_agent.errors import DGPOError

BACKENDS = ("auto", "vllm", "transformers")


def use_vllm(backend: str) -> bool:
    """``auto`` picks vLLM when a CUDA GPU is visible and vLLM is installed."""
    if backend not in BACKENDS:
        raise DGPOError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if backend == "transformers":
        return False
    has_vllm = importlib.util.find_spec("vllm") is not None
    if backend == "vllm":
        if not has_vllm:
            raise DGPOError("vLLM is not installed: pip install 'dgpo-agent[vllm]' (needs a CUDA GPU)")
        return True
    import torch

    return has_vllm and torch.cuda.is_available()


def vllm_command(model: str, host: str, port: int, extra: Sequence[str] = ()) -> list[str]:
    """The ``vllm serve`` command line. The model is served under its own name (the path), and
    ``--generation-config vllm`` keeps a checkpoint's sampling defaults (top_k, penalties) out of
    requests, as the transformers backend does."""
    return ["vllm", "serve", model, "--host", host, "--port", str(port), "--generation-config", "vllm", *extra]


def _cut(text: str, stops: Sequence[str], keep_stop: bool) -> tuple[str, str | None]:
    """The text up to the first stop string (kept only on request) and the stop that fired."""
    hits = [(text.find(s), s) for s in stops if s in text]
    if not hits:
        return text, None
    at, stop = min(hits)
    return text[: at + len(stop) if keep_stop else at], stop


class CompletionRequest(BaseModel):
    """The request fields the server reads, checked as OpenAI and vLLM check them (a finite temperature
    of at least 0, 0 < top_p <= 1, a non-empty prompt, a 63-bit seed); other vLLM fields
    (skip_special_tokens, ...) are accepted."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str | None = None
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    n: int = Field(1, ge=1, le=1)
    include_stop_str_in_output: bool = False

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, prompt: str | list[str]) -> str | list[str]:
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not prompts or not all(p for p in prompts):
            raise ValueError("must be a non-empty string or a non-empty list of non-empty strings")
        return prompt


def build_app(policy: Policy, model_name: str) -> Any:
    """The FastAPI app serving one token policy (it needs ``encode`` for the usage counts)."""
    from fastapi import FastAPI, HTTPException

    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    app = FastAPI(title="dgpo-agent completions server")
    lock = threading.Lock()

    @app.exception_handler(RequestValidationError)
    def invalid(request: Any, exc: RequestValidationError) -> JSONResponse:
        """400 with one line per invalid field, in vLLM's error shape."""
        fields = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"object": "error", "message": fields, "type": "BadRequestError", "code": 400}, status_code=400)

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "dgpo-agent"}]}

    @app.post("/v1/completions")
    def completions(request: CompletionRequest) -> dict:
        if request.model not in (None, model_name):
            raise HTTPException(404, f"The model `{request.model}` does not exist; this server serves `{model_name}`.")
        prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        params = SamplingParams(request.temperature, request.top_p, request.max_tokens, tuple(stops), request.seed)
        contexts = [Context("", [{"role": "prompt", "text": p, "ids": None}]) for p in prompts]
        try:
            with lock:
                outs = policy.generate(contexts, params)
        except DGPOError as err:
            raise HTTPException(400, str(err)) from err
        too_long = [i for i, out in enumerate(outs) if out.overflow]
        if too_long:
            raise HTTPException(400, f"prompt {too_long[0]} with max_tokens={request.max_tokens} exceeds the model's context window")
        choices, used = [], 0
        for i, out in enumerate(outs):
            text, fired = _cut(out.text, stops, request.include_stop_str_in_output)
            ids = out.token_ids or []
            used += len(ids)
            finished = fired is not None or len(ids) < request.max_tokens
            choices.append({"index": i, "text": text, "logprobs": None, "stop_reason": fired,
                            "finish_reason": "stop" if finished else "length"})  # fmt: skip
        prompt_tokens = sum(len(policy.encode(p) or []) for p in prompts)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": used, "total_tokens": prompt_tokens + used},
        }

    return app


def serve(model: str, host: str, port: int, backend: str = "auto", extra: Sequence[str] = ()) -> None:
    """Serve until interrupted: exec ``vllm serve`` (``extra`` goes to it), or the transformers app."""
    if model == "oracle" or model.startswith(("http://", "https://")):
        raise DGPOError(f"cannot serve {model!r}: pass a checkpoint directory or a Hugging Face model name")
    name = str(Path(model).resolve()) if Path(model).is_dir() else model
    if use_vllm(backend):
        command = vllm_command(name, host, port, extra)
        command[0] = shutil.which("vllm", path=str(Path(sys.executable).parent)) or "vllm"
        _print_connect(model, host, port)
        os.execvp(command[0], command)
    if extra:
        raise DGPOError(f"extra arguments {' '.join(extra)!r} are for `vllm serve`; the transformers server takes none")
    import uvicorn

    from dgpo_agent.backends.transformers import TransformersPolicy

    app = build_app(TransformersPolicy.from_pretrained(model), name)
    _print_connect(model, host, port)
    uvicorn.run(app, host=host, port=port)


def _print_connect(model: str, host: str, port: int) -> None:
    """How to build, against this server, the agent the checkpoint was trained as (its record's store,
    collection, turns and documents per search)."""
    from dgpo_agent.agent import AgentRecord

    url, record = f"http://{host}:{port}", AgentRecord.read(model)
    if record is None:
        print(f"connect with CompactSearchAgent({url!r}, store=<Chroma directory or URL>) or `dgpo-agent chat --model {url} --store DIR`")
        return
    settings = ", ".join(f"{k}={v!r}" for k, v in record.agent_settings().items())
    options = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in record.agent_settings().items())
    print(f"connect with CompactSearchAgent({url!r}, store={record.store!r}, {settings}) "
          f"or `dgpo-agent chat --model {url} --store {record.store} {options}`")
