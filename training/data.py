"""Trajectories as training examples: token ids plus a completion mask that is 1 only on model tokens.

Search-R1 traces keep retrieved ``<information>`` blocks inside the assistant turn, so chat-template
masks (TRL's ``assistant_only_loss``) would train on retrieved text. Here the mask is built from the
segments' roles instead: prompt and environment tokens are never a training target, in SFT, in KD
and (through ``env_mask``) in RL alike.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dgpo_agent.errors import DGPOError
from dgpo_agent.protocol import END_OF_TURN, parse_action, render_prompt
from dgpo_agent.rollout import TokenTrajectory
from dgpo_agent.state import Segment

if TYPE_CHECKING:
    from datasets import Dataset

Example = dict[str, list[int]]

def stop_id(tokenizer: Any) -> int:
    """The id that ends an assistant turn: ``<|im_end|>`` when the chat template closes turns with it
    (Qwen2.5), else the tokenizer's EOS."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if END_OF_TURN in template and END_OF_TURN in tokenizer.get_vocab():
        return tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if tokenizer.eos_token_id is None:
        raise DGPOError("the tokenizer has no EOS token: set tokenizer.eos_token before building training examples")
    return tokenizer.eos_token_id


def encode_segments(segments: Sequence[Segment], tokenizer: Any, question: str | None = None) -> Example:
    """Tokenise a text-only trajectory segment by segment, so masked spans end exactly at segment edges.

    With ``question`` the prompt is re-rendered in ``tokenizer``'s chat template (what a token backend
    would have shown the model); otherwise the prompt segment's text is used as is. Segments are
    encoded without added special tokens, as the token backends encode them at inference. A
    trajectory that ends in an answer gets the end-of-turn id as a final model token, so the model
    learns to stop.
    """
    if not segments or segments[0]["role"] != "prompt":
        raise DGPOError("a trajectory must start with its prompt segment: pass the full segments list")
    prompt, *rest = segments
    input_ids = _encode(render_prompt(question, tokenizer) if question is not None else prompt["text"], tokenizer)
    completion_mask = [0] * len(input_ids)
    for seg in rest:
        ids = _encode(seg["text"], tokenizer)
        input_ids += ids
        completion_mask += [int(seg["role"] == "model")] * len(ids)
    if rest and rest[-1]["role"] == "model" and parse_action(rest[-1]["text"]).kind == "answer":
        input_ids.append(stop_id(tokenizer))
        completion_mask.append(1)
    return {"input_ids": input_ids, "completion_mask": completion_mask}


def _encode(text: str, tokenizer: Any) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def from_token_trajectory(traj: TokenTrajectory) -> Example:
    """A tokenising backend's trajectory as an example: the sampled ids unchanged, loss on model tokens."""
    if len(traj.env_mask) != len(traj.response_ids):
        raise DGPOError(
            f"env_mask has {len(traj.env_mask)} entries for {len(traj.response_ids)} response ids: rebuild the trajectory"
        )
    return {
        "input_ids": traj.prompt_ids + traj.response_ids,
        "completion_mask": [0] * len(traj.prompt_ids) + traj.loss_mask,
    }


def example_from_row(row: dict, tokenizer: Any | None = None) -> Example:
    """One JSONL row as an example: a token row (``prompt_ids``, ``response_ids``, ``env_mask``, as a
    TGO stage writes) keeps its ids; a text row (``question``, ``segments``, as the oracle stage
    writes) is encoded with ``tokenizer``."""
    if "prompt_ids" in row:
        return from_token_trajectory(TokenTrajectory(row["prompt_ids"], row["response_ids"], row["env_mask"], None))
    if "segments" not in row:
        raise DGPOError("a trajectory row needs either prompt_ids/response_ids/env_mask or question/segments")
    if tokenizer is None:
        raise DGPOError("text trajectories need a tokenizer: pass the tokenizer of the model being trained")
    return encode_segments(row["segments"], tokenizer, question=row.get("question"))


def load_examples(path: Path, tokenizer: Any | None = None, correct_only: bool = False) -> Dataset:
    """A ``datasets.Dataset`` of examples from a JSONL of trajectories.

    ``correct_only`` keeps rows with ``scores.em == 1``: the paper distils on the teacher's correct
    trajectories only.
    """
    from datasets import Dataset

    path = Path(path)
    if not path.is_file():
        raise DGPOError(f"trajectory file {path} not found: run the stage that writes it first")
    examples = []
    with path.open() as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if correct_only and _em(row, path, line_no) != 1:
                continue
            examples.append(example_from_row(row, tokenizer))
    if not examples:
        raise DGPOError(f"no trajectories to train on in {path}: check the file (and correct_only)")
    return Dataset.from_list(examples)


def _em(row: dict, path: Path, line_no: int) -> float:
    try:
        return row["scores"]["em"]
    except (KeyError, TypeError):
        raise DGPOError(f"{path}:{line_no} has no scores.em: score the trajectories or pass correct_only=False") from None


@dataclass
class CompletionCollator:
    """Right-pads a batch and builds ``labels``: the input ids where ``completion_mask`` is 1, else -100."""

    pad_id: int

    @classmethod
    def for_tokenizer(cls, tokenizer: Any) -> CompletionCollator:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise DGPOError("the tokenizer has neither a pad nor an EOS token: set tokenizer.pad_token")
        return cls(pad)

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask`` and ``labels`` (B, T), and ``example`` (B,), the rows'
        dataset indices, when the examples carry one (what a teacher table is looked up by)."""
        if any("completion_mask" not in f for f in features):
            raise DGPOError(
                "examples lack completion_mask: build them with dgpo_agent.training.data and keep remove_unused_columns=False"
            )
        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), -100, dtype=torch.long)
        for i, f in enumerate(features):
            ids = torch.as_tensor(f["input_ids"], dtype=torch.long)
            n = len(ids)
            input_ids[i, :n] = ids
            attention_mask[i, :n] = 1
            labels[i, :n] = ids.masked_fill(torch.as_tensor(f["completion_mask"]) == 0, -100)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if all("example" in f for f in features):
            batch["example"] = torch.tensor([f["example"] for f in features], dtype=torch.long)
        return batch
