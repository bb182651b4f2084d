"""Optional embedder on the ``sentence-transformers`` library (only when the user has it).

genept-fast does not depend on sentence-transformers (nor on torch); this adapter exists for
users who already have it and a model, given by name or by local path. Loading by name may
contact the Hugging Face hub, as that library does; pass a path to stay offline.

A zero vector for a non-empty text can come from such a model legitimately (a static-embedding
model gives one to a text none of whose tokens it knows), but it would pass for GenePT's "no
text" and carries nothing, so it is refused like a NaN or an infinity: an
:class:`~genept_fast.errors.InputError` naming the model (see :meth:`Embedder._check_batch
<genept_fast.embed.base.Embedder._check_batch>`); nothing of that batch is stored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from genept_fast.embed.base import Embedder
from genept_fast.errors import InputError, MissingDependencyError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from genept_fast.embed.cache import EmbeddingCache

__all__ = ["SentenceTransformerEmbedder"]


class SentenceTransformerEmbedder(Embedder):
    """Embed texts with a ``sentence_transformers.SentenceTransformer`` model.

    Parameters
    ----------
    name_or_path
        Model name or local directory, as ``SentenceTransformer`` accepts.
    cache
        Embedding cache, or ``None``.
    batch_size
        Texts per forward pass (default 32).
    """

    is_paid = False

    def __init__(
        self,
        name_or_path: str,
        *,
        cache: EmbeddingCache | None = None,
        batch_size: int | None = None,
    ) -> None:
        super().__init__(cache=cache)
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            msg = (
                "'sentence-transformers:' embedders need the sentence-transformers package,"
                " which genept-fast does not install; use --embedder local for the offline"
                " ONNX model (pip install sentence-transformers pulls torch)"
            )
            raise MissingDependencyError(msg) from None
        if not name_or_path:
            msg = "give a model name or path: 'sentence-transformers:<name-or-path>'"
            raise InputError(msg)
        self.name = name_or_path
        self._model: Any = SentenceTransformer(name_or_path)
        self.batch_size = int(batch_size or 32)
        self.model_id = f"sentence-transformers:{name_or_path}"
        dim = self._model.get_sentence_embedding_dimension()
        self.dimension = int(dim) if dim else None
        self.max_input_tokens = int(self._model.max_seq_length or 512)

    @property
    def cache_namespace(self) -> str:
        return f"sentence-transformers|{self.name}|max_length={self.max_input_tokens}"

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        tok = self._model.tokenizer
        return [len(tok(t, add_special_tokens=True)["input_ids"]) for t in texts]

    def _plan(self, token_counts: list[int]) -> tuple[int, float]:
        from genept_fast.embed.local import LOCAL_TOKENS_PER_SECOND

        n = -(-len(token_counts) // self.batch_size)
        return n, sum(token_counts) / LOCAL_TOKENS_PER_SECOND

    def _embed_uncached(
        self,
        texts: list[str],
        sink: Callable[[Sequence[int], np.ndarray], None],
        *,
        token_counts: Sequence[int],
    ) -> None:
        # The model truncates at max_seq_length; the base class counted the texts over.
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            vecs = self._model.encode(chunk, batch_size=self.batch_size, normalize_embeddings=True)
            sink(range(start, start + len(chunk)), np.asarray(vecs, dtype=np.float32))
