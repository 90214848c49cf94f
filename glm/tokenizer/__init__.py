"""GLM tokenizers: our SentencePiece models and the released GLMs' BERT, GPT-2, RoBERTa and Chinese vocabularies.

Every tokenizer is a :class:`GLMTokenizer` (docs/contracts.md): the special-token ids are attributes
(``pad_id == eos_id``), ``encode``/``decode`` add no specials, and ``save(dir)`` writes a dir that
:func:`load_tokenizer` reloads with the same ids. The id tables of every family and the decisions behind
them are in docs/tokenizers.md.

Modules: ``base`` (interface, special-token table, saved-dir metadata), ``sentencepiece`` (our models),
``training`` (training them, and the trained-once cache), ``huggingface`` (BERT, GPT-2, RoBERTa),
``chinese`` (``cog-pretrain.model``), ``loading`` (:func:`load_tokenizer`), ``cli``
(``python -m glm.tokenizer train|encode``).
"""

from glm.tokenizer.base import (
    CHINESE_MODEL_FILE,
    LSTRIP_NAMES,
    META_FILE,
    META_FORMAT,
    META_VERSION,
    SP_MODEL_FILE,
    SPECIAL_NAMES,
    SPECIAL_TOKENS,
    TASK_MASK_NAMES,
    VOCAB_MULTIPLE,
    GLMTokenizer,
    pad_vocab_size,
)
from glm.tokenizer.chinese import GLMChineseTokenizer, chinese_special_ids
from glm.tokenizer.huggingface import (
    GPT2Tokenizer,
    RobertaTokenizer,
    WordPieceTokenizer,
    read_bpe_merges,
    read_bpe_vocab,
    read_wordpiece_vocab,
)
from glm.tokenizer.loading import load_tokenizer
from glm.tokenizer.sentencepiece import SentencePieceTokenizer
from glm.tokenizer.training import ensure_tokenizer, train_sentencepiece

__all__ = [
    "CHINESE_MODEL_FILE",
    "LSTRIP_NAMES",
    "META_FILE",
    "META_FORMAT",
    "META_VERSION",
    "SPECIAL_NAMES",
    "SPECIAL_TOKENS",
    "SP_MODEL_FILE",
    "TASK_MASK_NAMES",
    "VOCAB_MULTIPLE",
    "GLMChineseTokenizer",
    "GLMTokenizer",
    "GPT2Tokenizer",
    "RobertaTokenizer",
    "SentencePieceTokenizer",
    "WordPieceTokenizer",
    "chinese_special_ids",
    "ensure_tokenizer",
    "load_tokenizer",
    "pad_vocab_size",
    "read_bpe_merges",
    "read_bpe_vocab",
    "read_wordpiece_vocab",
    "train_sentencepiece",
]
