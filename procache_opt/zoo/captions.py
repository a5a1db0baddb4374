"""The text side of `pixart-digits`: a word-level tokenizer and a one-layer T5 encoder, both tiny.

PixArt-α encodes prompts with T5-XXL (4,096 channels, up to 120 tokens). No T5 can be downloaded here, and a
model that only ever sees ten digits needs none: `pixart-digits` ships a `T5EncoderModel` of the same class
with one layer and 32 channels, trained with the transformer, and a `PreTrainedTokenizerFast` over the
`VOCABULARY` below (lower-cased, split on whitespace and punctuation, `</s>` appended as T5 does). Any other
word becomes `<unk>`. The empty prompt, PixArt's negative prompt for classifier-free guidance, is `</s>`
alone: the null caption the model learns on 10% of its training samples.

A digit, written as a figure or a word, becomes `SLOTS_PER_DIGIT` tokens of its own ("7" and "seven" both
become ``seven_0 ... seven_7``; the tokenizer's normaliser does it). Why: with one digit token among a few
template words, cross-attention hands the image tokens a nearly position-independent vector at first, whose
gradient is the spatial mean of the denoising error, and the model did not learn its prompt in 4,000 CPU steps
(true vs shuffled caption loss 0.05-0.6% apart). With eight tokens per digit each image position can attend to
a different one, so the caption can carry a spatial template from the start: in 300-step probes (4 blocks) the
gap grew to 1.0% with the T5 layer and 2.5-3% with a bare table of 8 tokens per digit, against 2.2% for
`dit-digits`' adaLN labels (docs/zoo.md).

What the model understands, then, is a digit written as a figure or a word, with or without the words of the
`TEMPLATES` ("a handwritten 7", "the digit seven", "7"); `digit_prompt(7)` is the canonical prompt.
"""

from __future__ import annotations

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

from procache_opt.zoo.train_digits import NUM_DIGITS

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")
#: Caption templates used in training; ``{d}`` is the digit as a figure or a word (each half the time).
TEMPLATES = ("a handwritten {d}", "the digit {d}", "a {d}", "number {d}", "{d}", "handwritten digit {d}")
#: Caption tokens per digit: the tokenizer writes a digit (figure or word) as this many tokens of its own.
SLOTS_PER_DIGIT = 8


def slot_tokens(word: str) -> tuple[str, ...]:
    """The tokens a digit word (or its figure) becomes: ``seven_0 ... seven_7``."""
    return tuple(f"{word}_{slot}" for slot in range(SLOTS_PER_DIGIT))


VOCABULARY = (
    *SPECIAL_TOKENS, "a", "the", "handwritten", "digit", "number",
    *(token for word in DIGIT_WORDS for token in slot_tokens(word)),
)
#: Tokens per caption during training; the longest template (2 words and a digit's slots) plus `</s>` fits,
#: the rest is padding that the attention masks hide (sampling pads to the pipeline's 120, which the masks
#: make equivalent).
TRAIN_TOKENS = 12


def digit_prompt(digit: int) -> str:
    """The canonical prompt for ``digit``: "a handwritten 7"."""
    return TEMPLATES[0].format(d=digit)


def make_tokenizer() -> PreTrainedTokenizerFast:
    """The word-level tokenizer over `VOCABULARY`, in the form `PixArtAlphaPipeline.encode_prompt` calls."""
    vocab = {word: i for i, word in enumerate(VOCABULARY)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    figures = [normalizers.Replace(Regex(rf"\b{d}\b"), DIGIT_WORDS[d]) for d in range(NUM_DIGITS)]
    words = [normalizers.Replace(Regex(rf"\b{w}\b"), " ".join(slot_tokens(w))) for w in DIGIT_WORDS]
    core.normalizer = normalizers.Sequence([normalizers.Lowercase(), *figures, *words])
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=120
    )


def make_text_encoder(d_model: int = 32) -> T5EncoderModel:
    """A `T5EncoderModel` with one layer of ``d_model`` channels over `VOCABULARY` (T5's initialisation)."""
    config = T5Config(
        vocab_size=len(VOCABULARY), d_model=d_model, d_kv=d_model // 2, num_heads=2, d_ff=2 * d_model,
        num_layers=1, relative_attention_num_buckets=8, relative_attention_max_distance=16,
        feed_forward_proj="relu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


def caption_batch(
    labels: torch.Tensor, null_label: int, tokenizer: PreTrainedTokenizerFast, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention masks (N, `TRAIN_TOKENS`) for digit ``labels``; ``null_label`` -> "".

    Each sample draws one of the `TEMPLATES` and writes its digit as a figure or a word at random, so the
    model learns the digit, not one phrasing.
    """
    templates = torch.randint(0, len(TEMPLATES), (len(labels),), generator=generator).tolist()
    as_word = (torch.rand(len(labels), generator=generator) < 0.5).tolist()
    captions = [
        "" if y == null_label else TEMPLATES[t].format(d=DIGIT_WORDS[y] if w else str(y))
        for y, t, w in zip(labels.tolist(), templates, as_word, strict=True)
    ]
    encoded = tokenizer(captions, padding="max_length", max_length=TRAIN_TOKENS, return_tensors="pt")
    return encoded.input_ids, encoded.attention_mask
