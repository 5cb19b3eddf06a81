"""The world tokenizer: a byte-level BPE trained on the world's passages and the protocol's text.

It is trained with entity names in the text, so a name is a few tokens rather than a dozen bytes
(tiny models copy such names far better: docs/tiny-world.md). For the same reason every four-digit
number in the texts (the world's years) is one token: split digit by digit, as Qwen2's pre-tokeniser
does, a year is four tokens that recur in every other year, and a teacher trained on them copied the
right documents' names but wrote invented years. The protocol tags are single tokens that are not
"special": Qwen3 marks ``<think>`` the same way, so a decode with ``skip_special_tokens=True`` (what
TRL and vLLM use by default) keeps them and ``parse_action`` still sees the action.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from dgpo_agent import protocol

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
TAG_TOKENS = tuple(f"<{slash}{tag}>" for tag in protocol.TAGS for slash in ("", "/"))

# ChatML as Qwen2.5 renders it, without a system turn; the generation prompt opens the assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Tags and chat markers are cut out of the training text, so no merges are spent on their pieces.
_RESERVED_RE = re.compile("|".join(re.escape(t) for t in (EOS, *CHAT_TOKENS, *TAG_TOKENS)))
_YEAR_RE = re.compile(r"(?<!\d)\d{4}(?!\d)")


def world_texts(corpus: Iterable[dict], questions: Iterable[str] = ()) -> Iterator[str]:
    """What the tokenizer should see: every passage as a retrieved document, each question's prompt as the
    chat template renders it, and the corrective observation."""
    from jinja2 import Template

    for record in corpus:
        yield protocol.information([{**record, "score": 0.0}])
    chat = Template(CHAT_TEMPLATE)
    for question in questions:
        yield chat.render(messages=[{"role": "user", "content": protocol.instructions(question)}], add_generation_prompt=True)
    yield protocol.CORRECTIVE_OBSERVATION


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 4096, out_dir: str | Path | None = None
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` (deterministic for the same texts), saved to ``out_dir`` if given.

    Ids 0-10 are EOS (also pad), the two chat markers and the eight protocol tags; each four-digit number
    of the texts is added as one (non-special) token after the BPE vocabulary. Normalisation and
    pre-tokenisation are Qwen2's (digits one by one): ``AutoTokenizer`` loads any directory holding a Qwen2
    config as a ``Qwen2Tokenizer``, which rebuilds that pipeline around the saved vocabulary, so anything
    else would tokenize differently once saved beside a model.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    texts = list(texts)
    years = sorted({year for text in texts for year in _YEAR_RE.findall(text)})
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(years),
        special_tokens=[EOS, *CHAT_TOKENS, *TAG_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator((piece for text in texts for piece in _RESERVED_RE.split(text)), trainer=trainer)
    bpe.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in TAG_TOKENS])
    bpe.add_tokens([AddedToken(year, special=False, normalized=False) for year in years])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=EOS,
        pad_token=EOS,
        additional_special_tokens=list(CHAT_TOKENS),
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    if out_dir is not None:
        tokenizer.save_pretrained(out_dir)
    return tokenizer
