"""WordLlama: a static text model (one vector per token, a text's vector their mean), offline.

The weights and the tokenizer are the files the ``wordllama`` wheel (0.4.0.post1, MIT) ships:
``wordllama/weights/l2_supercat_256.safetensors`` (32,000 Llama-2 tokens × 256, float16) and
``wordllama/tokenizers/l2_supercat_tokenizer_config.json`` (the Llama-2 SentencePiece BPE as a
``tokenizers`` file). Both are found without importing the package and checked against pinned
sha256 digests; the vectors are read with ``safetensors`` and the texts tokenized with
``tokenizers``. This is what ``wordllama``'s own ``WordLlamaInference.embed`` computes (no special
tokens, the mean of the token vectors, float32), without its loader, measured here as leaner and
safer: importing ``wordllama`` takes ~1.0 s and pulls pydantic, toml and requests, calls
``logging.basicConfig(level=INFO)`` (it changes the user's root logger), and its
``WordLlama.load(disable_download=True)`` cannot find the tokenizer file its own wheel ships
(0.4.0.post1 looks under ``tokenizer/``, the file is under ``tokenizers/``), while the fallback
path of that loader downloads from the Hugging Face hub; reading the two files takes ~0.3 s and
never reaches a network.

Texts are never truncated (``wordllama`` does not truncate either): :attr:`max_input_tokens` is
the int32 maximum. Every vector is L2-normalised, as the other embedders' are.

Because a text's vector is the mean of its tokens' vectors, and the Llama-2 vocabulary has no
token with ``▁`` (the space marker) after its first character other than runs of ``▁``, the
tokens of ``"A B"`` are those of ``"A"`` followed by those of ``"B"`` whenever ``A`` does not end
with a space: :meth:`WordLlamaEmbedder.additive` says so per word (checked on the vocabulary at
load time and by tokenizing each word in context), which lets GenePT-s sentences be summed gene
by gene (:mod:`genept_fast.encode.static`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genept_fast._extras import missing_extra
from genept_fast.embed.base import Embedder
from genept_fast.errors import InputError, InternalError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from genept_fast.embed.cache import EmbeddingCache

__all__ = ["WORDLLAMA_MODEL_NAME", "WordLlamaEmbedder"]

#: The model (``model_id`` is ``"wordllama:" + WORDLLAMA_MODEL_NAME``).
WORDLLAMA_MODEL_NAME = "l2_supercat_256"
_WEIGHTS = ("weights", "l2_supercat_256.safetensors")
_TOKENIZER = ("tokenizers", "l2_supercat_tokenizer_config.json")
#: sha256 of the two files in the wordllama 0.4.0.post1 wheel.
WEIGHTS_SHA256 = "64b47a2dc493cb8e85944076601189739852d7b64e0e1eedcb1937a251cd9fd5"
TOKENIZER_SHA256 = "93248f2a9ec36c7b35f700a033d5f36228aae48db61aee31007fa49062cdeb68"
_TENSOR = "embedding.weight"
#: No truncation: the largest count a token table can hold.
NO_LIMIT = 2**31 - 1
#: Measured on one core (tokens per second, tokenizing and pooling), for time estimates.
TOKENS_PER_SECOND = 2_000_000.0
#: Texts per batch handed back to the cache.
BATCH = 4096
#: Words tokenized in context to check that their tokens are their own.
_PROBE = "a"
#: Words joined into one text per additivity check.
_BLOCK = 512


def _split_tokens(
    lengths: list[int], ids: list[int], offsets: list[tuple[int, int]]
) -> list[list[int]] | None:
    """The tokens of words of these lengths joined by single spaces, word by word (a word's
    tokens start at the space before it), or ``None`` when a token crosses into the next word."""
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(np.asarray(lengths[:-1], dtype=np.int64) + 1, out=starts[1:])
    ends = starts + np.asarray(lengths, dtype=np.int64)
    segment = np.maximum(starts - 1, 0)  # from the space before the word
    span = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    owner = np.searchsorted(segment, span[:, 0], side="right") - 1
    if (span[:, 1] > ends[owner]).any() or (owner < 0).any():
        return None
    cuts = np.searchsorted(owner, np.arange(1, len(lengths)))
    return [part.tolist() for part in np.split(np.asarray(ids, dtype=np.int64), cuts)]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def package_files() -> tuple[Path, Path]:
    """(weights, tokenizer) of the installed ``wordllama`` package, found without importing it."""
    try:
        spec = importlib.util.find_spec("wordllama")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        extra = "wordllama"
        raise missing_extra(extra, f"the {extra!r} embedder", (extra,))
    root = Path(next(iter(spec.submodule_search_locations)))
    weights, tokenizer = root.joinpath(*_WEIGHTS), root.joinpath(*_TOKENIZER)
    for path in (weights, tokenizer):
        if not path.is_file():
            msg = (
                f"the wordllama package at {root} lacks {path.name}: install wordllama=="
                "0.4.0.post1 (pip install 'genept-fast[wordllama]')"
            )
            raise InputError(msg)
    return weights, tokenizer


def _verify(path: Path, expected: str) -> None:
    got = _sha256(path)
    if got != expected:
        msg = (
            f"{path} has sha256 {got}, expected {expected}: a corrupt file or another wordllama"
            " version; install wordllama==0.4.0.post1 (pip install 'genept-fast[wordllama]')"
        )
        raise InputError(msg)


class WordLlamaEmbedder(Embedder):
    """WordLlama ``l2_supercat`` (256-d, Llama-2 tokens) embeddings: the mean of a text's token
    vectors, L2-normalised.

    Parameters
    ----------
    cache
        Embedding cache, or ``None``.
    batch_size
        Texts per batch handed to the cache (default 4,096).
    """

    is_paid = False

    def __init__(
        self, *, cache: EmbeddingCache | None = None, batch_size: int | None = None
    ) -> None:
        super().__init__(cache=cache)
        self.weights_path, self.tokenizer_path = package_files()
        _verify(self.weights_path, WEIGHTS_SHA256)
        _verify(self.tokenizer_path, TOKENIZER_SHA256)
        self.batch_size = int(batch_size or BATCH)
        if self.batch_size < 1:
            msg = f"batch_size must be positive, got {batch_size}"
            raise InputError(msg)
        self.model_id = f"wordllama:{WORDLLAMA_MODEL_NAME}"
        self.dimension = 256
        self.max_input_tokens = NO_LIMIT
        self._vectors: np.ndarray | None = None
        self._tokenizer: Any = None
        self._vocab_ok: bool | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_vectors", "_tokenizer", "_lock"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._vectors = self._tokenizer = None
        self._lock = threading.Lock()

    @property
    def cache_namespace(self) -> str:
        return f"wordllama|{WORDLLAMA_MODEL_NAME}|sha={WEIGHTS_SHA256[:16]}"

    def _vectors_error(self, message: str) -> InputError | InternalError:
        return InternalError(f"{message} (the packaged wordllama model cannot give these: a bug)")

    # -- loading -------------------------------------------------------------------------------
    def load(self) -> tuple[np.ndarray, Any]:
        """(token vectors, float32 ``(32000, 256)``; the tokenizer), loaded once."""
        with self._lock:
            if self._vectors is None:
                from safetensors.numpy import load_file
                from tokenizers import Tokenizer

                tok = Tokenizer.from_file(str(self.tokenizer_path))
                tok.no_truncation()
                tok.no_padding()
                table = load_file(str(self.weights_path))[_TENSOR]
                self._tokenizer = tok
                self._vectors = np.ascontiguousarray(table, dtype=np.float32)
            return self._vectors, self._tokenizer

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """The token ids of each text (no special tokens), as ``wordllama`` tokenizes."""
        _, tok = self.load()
        return [e.ids for e in tok.encode_batch(list(texts), add_special_tokens=False)]

    def _sums(self, ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Per token list, the float32 sum of its vectors and its length (a sparse texts ×
        vocabulary count matrix times the token vectors: no tokens × 256 temporary)."""
        import scipy.sparse as sp

        vectors, _ = self.load()
        counts = np.fromiter((len(i) for i in ids), dtype=np.int64, count=len(ids))
        indptr = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        flat = np.fromiter((t for i in ids for t in i), dtype=np.int64, count=int(indptr[-1]))
        ones = np.ones(flat.size, dtype=np.float32)
        bag = sp.csr_array((ones, flat, indptr), shape=(len(ids), vectors.shape[0]))
        sums = np.asarray(bag @ vectors, dtype=np.float32)
        return sums.reshape(len(ids), vectors.shape[1]), counts

    def token_sums(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per text, the float32 sum of its token vectors and its token count."""
        return self._sums(self.token_ids(texts))

    def token_table(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per word: the sum of its token vectors, its token count, and whether its tokens in
        ``"... X <word> Y ..."`` (single spaces) are its tokens alone whatever ``X`` and ``Y``
        (as :meth:`additive` says).

        The words that can be (:meth:`_may_add`) are tokenized joined by spaces, a block at a
        time, their tokens assigned to them by character offsets: a block in which no token
        crosses a space between words gives each word its tokens in a sentence, which are its
        tokens alone (no token spans such a space). A block in which one does, and the other
        words, are tokenized word by word (and such a block's words checked between probes).
        """
        words = list(words)
        ok = self._may_add(words)
        ids: list[list[int] | None] = [None] * len(words)
        todo = np.flatnonzero(ok)
        blocks = [todo[i : i + _BLOCK] for i in range(0, todo.size, _BLOCK)]
        _, tok = self.load()
        texts = [" ".join(words[j] for j in block) for block in blocks]
        for block, enc in zip(
            blocks, tok.encode_batch(texts, add_special_tokens=False), strict=True
        ):
            parts = _split_tokens([len(words[j]) for j in block], enc.ids, enc.offsets)
            if parts is None:
                alone = self.token_ids([words[j] for j in block])
                ok[block] = self._probe([words[j] for j in block], alone)
                parts = alone
            for j, part in zip(block, parts, strict=True):
                ids[j] = part
        rest = [j for j, i in enumerate(ids) if i is None]
        for j, part in zip(rest, self.token_ids([words[j] for j in rest]), strict=True):
            ids[j] = part
        sums, counts = self._sums([i or [] for i in ids])
        return sums, counts, ok

    # -- additivity ----------------------------------------------------------------------------
    def _vocabulary_is_additive(self) -> bool:
        """Whether no token has ``▁`` after its first character, runs of ``▁`` aside (then no
        token spans a single space between two words)."""
        if self._vocab_ok is None:
            _, tok = self.load()
            self._vocab_ok = all(
                "▁" not in t[1:] or set(t) == {"▁"} for t in tok.get_vocab(with_added_tokens=False)
            )
        return self._vocab_ok

    def additive(self, words: Sequence[str], ids: list[list[int]] | None = None) -> np.ndarray:
        """Per word, whether its tokens in ``"... X <word> Y ..."`` (single spaces) are its
        tokens alone (``token_ids([word])``, or ``ids`` when given), whatever ``X`` and ``Y``.

        True when the vocabulary holds no token that spans a space between words (checked once
        on the vocabulary: then a token never crosses such a space), the word does not end with
        a space or ``▁`` (it would join the next word's ``▁``) and holds no special token text;
        checked on the words themselves too: words joined by spaces, a block at a time, must
        give the concatenation of their tokens (a block that does not is checked word by word,
        between two probe words).
        """
        words = list(words)
        ok = self._may_add(words)
        alone = self.token_ids(words) if ids is None else ids
        todo = np.flatnonzero(ok)
        blocks = [todo[i : i + _BLOCK] for i in range(0, todo.size, _BLOCK)]
        joined = self.token_ids([" ".join(words[j] for j in block) for block in blocks])
        for block, got in zip(blocks, joined, strict=True):
            if got != [t for j in block for t in alone[j]]:
                ok[block] = self._probe([words[j] for j in block], [alone[j] for j in block])
        return ok

    def _may_add(self, words: list[str]) -> np.ndarray:
        """Whether each word may add up: the vocabulary holds no token that spans a space
        between words, and the word does not end with a space or ``▁`` nor holds special
        token text (``<s>``)."""
        if not words or not self._vocabulary_is_additive():
            return np.zeros(len(words), dtype=bool)
        _, tok = self.load()
        special = [t.content for t in tok.get_added_tokens_decoder().values()]
        return np.array(
            [
                bool(w.strip()) and not w.endswith((" ", "▁")) and not any(t in w for t in special)
                for w in words
            ],
            dtype=bool,
        )

    def _probe(self, words: list[str], alone: list[list[int]]) -> np.ndarray:
        """Whether each word, between two probe words, keeps its tokens."""
        (probe,) = self.token_ids([_PROBE])
        context = self.token_ids([f"{_PROBE} {w} {_PROBE}" for w in words])
        return np.array(
            [c == probe + a + probe for a, c in zip(alone, context, strict=True)], dtype=bool
        )

    # -- the Embedder interface ----------------------------------------------------------------
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text (no special tokens; never truncated)."""
        return [len(i) for i in self.token_ids(texts)]

    def _plan(self, token_counts: list[int]) -> tuple[int, float]:
        n_batches = -(-len(token_counts) // self.batch_size)
        return n_batches, sum(token_counts) / TOKENS_PER_SECOND

    def embed_mean(self, texts: Sequence[str]) -> np.ndarray:
        """The L2-normalised mean token vector of each text, uncached (a text without tokens
        gives zeros)."""
        sums, counts = self.token_sums(texts)
        means = sums / np.maximum(counts, 1).astype(np.float32)[:, None]
        norms = np.linalg.norm(means, axis=1, keepdims=True)
        return (means / np.where(norms > 0, norms, 1)).astype(np.float32)

    def _embed_uncached(
        self,
        texts: list[str],
        sink: Callable[[Sequence[int], np.ndarray], None],
        *,
        token_counts: Sequence[int],
    ) -> None:
        for start in range(0, len(texts), self.batch_size):
            stop = min(start + self.batch_size, len(texts))
            sink(range(start, stop), self.embed_mean(texts[start:stop]))
