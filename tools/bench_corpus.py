"""Documents for the benchmarks, cut from freely licensed prose every machine here has,
and the token pieces of a prompt as apeserve builds it, for the peers that are given
token ids.

Prose: the docstrings of Python's standard library (PSF licence; those of 300
characters or more, whitespace collapsed) followed by the licence texts Debian ships in
/usr/share/common-licenses. About 130,000 words: more than the 131,072 tokens of the
largest row.
"""

from __future__ import annotations

import ast
import sysconfig
from dataclasses import dataclass
from pathlib import Path

LICENCES = ("GPL-3", "Apache-2.0", "MPL-2.0", "GFDL-1.3", "LGPL-2.1", "Artistic", "GPL-2")
SEPARATOR = "\n\n"  # what follows each document in the user turn (model/chat_template.h)


def prose_words() -> list[str]:
    """The corpus as words, in a fixed order."""
    words: list[str] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                text = ast.get_docstring(node)
                if text and len(text) >= 300:
                    words.extend(text.split())
    for name in LICENCES:
        path = Path("/usr/share/common-licenses") / name
        if path.exists():
            words.extend(path.read_text(encoding="utf-8", errors="replace").split())
    return words


@dataclass
class Documents:
    """Consecutive pieces of the corpus, each at most `tokens` tokens long with its
    separator: whole words, so a few tokens short where a long word did not fit."""

    texts: list[str]
    token_counts: list[int]


def cut_documents(tokenizer, words: list[str], count: int, tokens: int, start: int = 0) -> Documents:
    """`count` documents of at most `tokens` tokens from word `start` on (wrapping around)."""
    texts, counts, at = [], [], start
    for _ in range(count):
        low, high = 1, tokens * 2  # words: a token is at least a character, a word one token
        best = None
        while low <= high:  # the most words whose tokens fit
            middle = (low + high) // 2
            text = " ".join(words[(at + k) % len(words)] for k in range(middle))
            length = len(tokenizer(text + SEPARATOR, add_special_tokens=False).input_ids)
            if length <= tokens:
                best, low = (middle, text, length), middle + 1
            else:
                high = middle - 1
        taken, text, length = best
        texts.append(text)
        counts.append(length)
        at += taken
    return Documents(texts, counts)


@dataclass
class PromptPieces:
    """A prompt as apeserve encodes it: the shared prefix (system turn and the opening of
    the user turn), each document with its separator, and the query with the opening of
    the assistant's turn. SEQUENTIAL feeds them one after another."""

    prefix: list[int]
    contexts: list[list[int]]
    query: list[int]

    def sequential(self) -> list[int]:
        ids = list(self.prefix)
        for context in self.contexts:
            ids.extend(context)
        ids.extend(self.query)
        return ids


class PromptBuilder:
    """Token pieces by the model's own tokenizer and chat template (transformers)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        sentinel = "\u0001DOCUMENTS\u0001"
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": sentinel}],
                                                 add_generation_prompt=True, tokenize=False)
        self.prefix_text, self.suffix_text = rendered.split(sentinel)
        self.prefix = self.encode(self.prefix_text)
        self._contexts: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def context(self, document: str) -> list[int]:
        if document not in self._contexts:
            self._contexts[document] = self.encode(document + SEPARATOR)
        return self._contexts[document]

    def pieces(self, documents: list[str], question: str) -> PromptPieces:
        return PromptPieces(self.prefix, [self.context(d) for d in documents],
                            self.encode(question + self.suffix_text))
