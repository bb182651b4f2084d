"""Argument types shared by the subcommands: :func:`int_range` bounds an integer option so that
an absurd value (``--top-n 99999999999999999999``) is a one-line usage error, not an overflow
deep inside; :func:`url` refuses a malformed URL (bad port, bad IPv6 literal, no scheme) the
same way, naming it with its password masked.

The vocabulary every command shares is here too: :func:`add_embedder_arguments` (the embedder
options, one group), :func:`build_embedder` (the embedder they describe) and
:func:`hidden_alias` (an old spelling that still works, out of ``--help``)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genept_fast._secrets import check_url
from genept_fast.errors import InvalidArgumentError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from genept_fast.embed import Embedder

#: The largest count any integer option takes (a 32-bit signed integer).
INT_MAX = 2**31 - 1


def _number(text: str, cast: Callable[[str], float], what: str) -> float:
    try:
        return cast(text)
    except ValueError:
        msg = f"{text!r} is not {what}"
        raise argparse.ArgumentTypeError(msg) from None


def int_range(lo: int = 1, hi: int = INT_MAX) -> Callable[[str], int]:
    """An argparse ``type`` that accepts integers in ``lo..hi``."""

    def parse(text: str) -> int:
        value = int(_number(text, int, "an integer"))
        if not lo <= value <= hi:
            msg = f"{value} is out of range ({lo:,}..{hi:,})"
            raise argparse.ArgumentTypeError(msg)
        return value

    parse.__name__ = "integer"
    return parse


def url(text: str) -> str:
    """An argparse ``type``: an http(s) URL a client can call (see
    :func:`genept_fast._secrets.check_url`); its password is remembered for the scrubber."""
    try:
        return check_url(text, option="URL")
    except InvalidArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("URL: ")) from None


def positive_float(text: str) -> float:
    """An argparse ``type``: a finite number > 0 (seconds, intervals)."""
    value = _number(text, float, "a number")
    if not (value > 0 and math.isfinite(value)):
        msg = f"{text} must be a finite number > 0"
        raise argparse.ArgumentTypeError(msg)
    return value


def open_fraction(text: str) -> float:
    """An argparse ``type``: a number strictly between 0 and 1 (a held-out fraction)."""
    value = _number(text, float, "a number")
    if not 0.0 < value < 1.0:
        msg = f"{text} is not a number between 0 and 1 (both excluded)"
        raise argparse.ArgumentTypeError(msg)
    return value


def probability(text: str) -> float:
    """An argparse ``type``: a number in [0, 1] (confidences, fractions)."""
    value = _number(text, float, "a number")
    if not 0.0 <= value <= 1.0:
        msg = f"{text} is not a number in [0, 1]"
        raise argparse.ArgumentTypeError(msg)
    return value


# -- the embedder options, one group for every command that embeds text ---------------------

#: The options of :func:`add_embedder_arguments`, as the flags a user types (for messages).
EMBEDDER_FLAGS = (
    "--embedder",
    "--base-url",
    "--dimensions",
    "--cache-dir",
    "--no-cache",
    "--batch-size",
    "--max-concurrency",
    "--timeout",
    "--max-retries",
)

#: The defaults of the group (``--embedder`` and ``--batch-size`` default to ``None``, which
#: :func:`build_embedder` reads as "local" and "the provider's default").
EMBEDDER_DEFAULTS: dict[str, Any] = {
    "embedder": None,
    "base_url": None,
    "dimensions": None,
    "cache_dir": None,
    "no_cache": False,
    "batch_size": None,
    "max_concurrency": 4,
    "timeout": 60.0,
    "max_retries": 6,
}


#: The most inputs one OpenAI embeddings request takes (the API's limit).
OPENAI_MAX_BATCH = 2048


def add_embedder_arguments(
    parser: argparse.ArgumentParser, *, title: str = "text embedder", applies: str = ""
) -> argparse._ArgumentGroup:
    """Add the embedder options (:data:`EMBEDDER_FLAGS`) as one argument group.

    ``applies`` (e.g. ``"--method s"``) is said in the group's description: the options that
    matter only for some calls of the command.
    """
    where = f" (used with {applies})" if applies else ""
    g = parser.add_argument_group(
        title,
        f"the text model and how it is called{where};\n"
        "with openai:MODEL the API key comes from OPENAI_API_KEY",
    )
    g.add_argument(
        "--embedder",
        metavar="SPEC",
        help="'local' (offline MiniLM), 'openai:MODEL' or 'sentence-transformers:NAME'"
        " (default: local)",
    )
    g.add_argument(
        "--base-url",
        type=url,
        help="OpenAI-compatible server root for openai:MODEL, e.g. http://localhost:8000/v1"
        " (default: OpenAI, or $OPENAI_BASE_URL)",
    )
    g.add_argument(
        "--dimensions",
        type=int_range(),
        help="output dimension, openai:text-embedding-3-* only (default: the model's)",
    )
    g.add_argument(
        "--cache-dir",
        type=Path,
        help="embedding cache folder (default: $GENEPT_FAST_CACHE_DIR or ~/.cache/genept-fast)",
    )
    g.add_argument(
        "--no-cache", action="store_true", help="do not read or write the embedding cache"
    )
    g.add_argument(
        "--batch-size",
        type=int_range(),
        help="inputs per request / forward pass (default: the provider's)",
    )
    for flag, kind, what in (
        ("--max-concurrency", int_range(1, 256), "requests in flight"),
        ("--timeout", positive_float, "seconds per request"),
        ("--max-retries", int_range(0, 100), "retries per request"),
    ):
        g.add_argument(
            flag,
            type=kind,
            default=EMBEDDER_DEFAULTS[flag[2:].replace("-", "_")],
            help=f"{what}, openai:MODEL (default: %(default)s)",
        )
    return g


def embedder_flags_given(args: argparse.Namespace) -> list[str]:
    """The embedder flags of :func:`add_embedder_arguments` set to other than their default
    (for "does not apply" messages)."""
    return [
        flag
        for flag in EMBEDDER_FLAGS
        if getattr(args, flag[2:].replace("-", "_"))
        != EMBEDDER_DEFAULTS[flag[2:].replace("-", "_")]
    ]


def build_embedder(args: argparse.Namespace, *, use_batch: bool = False, **extra: Any) -> Embedder:
    """The embedder the options of :func:`add_embedder_arguments` describe (``extra``: more
    keywords for :func:`genept_fast.embed.get_embedder`, e.g. the Batch API's).

    Options that do not apply to the chosen embedder are refused here, naming the flags.
    """
    from genept_fast.embed import get_embedder

    spec = args.embedder or "local"
    openai = spec.strip().lower().startswith("openai:")
    if openai and args.batch_size is not None and args.batch_size > OPENAI_MAX_BATCH:
        msg = (
            f"--batch-size {args.batch_size}: an OpenAI embeddings request takes at most"
            f" {OPENAI_MAX_BATCH:,} inputs"
        )
        raise InvalidArgumentError(msg)
    if not openai:
        wrong = [
            flag
            for flag, value in (
                ("--base-url", args.base_url),
                ("--dimensions", args.dimensions),
                ("--batch-api", use_batch or None),
            )
            if value is not None
        ]
        if wrong:
            msg = f"{', '.join(wrong)} apply only to --embedder openai:MODEL, not {spec!r}"
            raise InvalidArgumentError(msg)
    embedder = get_embedder(
        spec,
        base_url=args.base_url,
        dimensions=args.dimensions,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        batch_size=args.batch_size,
        max_concurrency=args.max_concurrency,
        timeout=args.timeout,
        max_retries=args.max_retries,
        use_batch=use_batch,
        **extra,
    )
    if (
        getattr(embedder, "official", False)
        and not os.environ.get("OPENAI_API_KEY")
        and not getattr(args, "dry_run", False)
    ):
        msg = (
            f"--embedder {spec} needs an API key: set OPENAI_API_KEY (--dry-run estimates the"
            " cost without one; --base-url names a compatible server that may need none)"
        )
        raise InvalidArgumentError(msg)
    return embedder


# -- old spellings ----------------------------------------------------------------------------

#: Attribute of a parser that holds its old spellings: ``{old: (new, deprecated)}``.
_OLD = "genept_fast_old_spellings"


def old_spelling(
    parser: argparse.ArgumentParser, old: str, new: str, *, deprecated: bool = False
) -> None:
    """Accept ``old`` as a spelling of the option ``new`` of ``parser``, out of ``--help``.

    The command line is respelled before argparse reads it (:func:`respell`, called by the
    ``genept-fast`` parser), so ``old`` behaves exactly as ``new`` does: same type, same
    ``required``, same messages (which name ``new``). ``deprecated``: using ``old`` prints a
    one-line note on stderr (for a spelling that meant different things in different commands,
    such as ``--batch``).
    """
    spellings: dict[str, tuple[str, bool]] = parser.__dict__.setdefault(_OLD, {})
    spellings[old] = (new, deprecated)


def respell(parser: argparse.ArgumentParser, args: Sequence[str]) -> list[str]:
    """``args`` with the old spellings of ``parser`` (:func:`old_spelling`) replaced by the new
    ones (``--old VALUE`` and ``--old=VALUE``; nothing after ``--``)."""
    spellings: dict[str, tuple[str, bool]] = getattr(parser, _OLD, {})
    out = list(args)
    if not spellings:
        return out
    for i, arg in enumerate(out):
        if arg == "--":
            break
        name, eq, value = arg.partition("=")
        if name not in spellings:
            continue
        new, deprecated = spellings[name]
        out[i] = new + eq + value
        if deprecated:
            print(f"{parser.prog}: note: {name} is deprecated; use {new}", file=sys.stderr)
    return out


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` of every command: descriptions wrapped to the terminal paragraph by paragraph
    (a blank line starts a paragraph; one whose lines are indented or bulleted is kept as
    written), and each option's default said (``(default: 4)``) unless its help already says
    it or it has none (``None``, a flag)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        out = []
        for para in text.split("\n\n"):
            lines = para.splitlines()
            if any(line[:1].isspace() or line.startswith(("- ", "* ")) for line in lines):
                out.append("\n".join(indent + line for line in lines))
            else:
                out.append(
                    textwrap.fill(
                        " ".join(para.split()),
                        width,
                        initial_indent=indent,
                        subsequent_indent=indent,
                    )
                )
        return "\n\n".join(out)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or "default" in text.lower()
            or text == argparse.SUPPRESS
        ):
            return action.help
        if isinstance(default, (list, tuple)):
            shown = " ".join(str(d) for d in default)
            return f"{text} (default: {shown})"
        return f"{text} (default: %(default)s)"


def check_distinct(flag: str, values: Sequence[str] | None) -> None:
    """Refuse a list option that names something twice (``--obsm X X``), naming ``flag``."""
    if values is not None and len(set(values)) != len(values):
        msg = f"{flag} lists a key twice: {list(values)}"
        raise InvalidArgumentError(msg)
