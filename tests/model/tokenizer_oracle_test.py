"""Our tokenizer against the Hugging Face tokenizer of the same GGUF file.

Over a deterministic corpus of more than 300 strings (English, code, runs of
whitespace, digits, punctuation, CJK, emoji, accents, special tokens, and seeded random
mixtures of all of these), the ids must be identical, decode(encode(s)) must give s
back, and streaming decode, token by token, must give s in valid UTF-8 pieces. Run by
CTest, which sets APESERVE_TEST_MODEL and ORACLE_HELPER.
"""

import json
import os
import random
import subprocess
import tempfile
import unittest

from transformers import AutoTokenizer

ENGLISH = [
    "Hello world", "Hello, world!", "The quick brown fox jumps over the lazy dog.",
    "It's a truth universally acknowledged.", "I'm sure you're right; they'll see.",
    "DON'T SHOUT", "We've been there, haven't we?", "a", "A", "I", "ok",
    "Retrieval-augmented generation reuses documents.", "e-mail me at dev@example.com",
    "https://example.com/path?query=1&x=y#frag", "Mr. Smith went to Washington D.C. in 1999.",
    "state-of-the-art, well-known, twenty-one", "CamelCaseIdentifiersAreCommon",
    "snake_case_identifiers_too", "UPPER lower MiXeD", "antidisestablishmentarianism",
]
CODE = [
    "def f(x):\n    return x * 2\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    '{"key": "value", "list": [1, 2, 3], "nested": {"a": null}}',
    "<div class=\"main\"><p>Text</p></div>",
    "SELECT * FROM users WHERE id = 42 AND name LIKE '%bob%';",
    "#include <vector>\nint main() { return 0; }",
    "x += 1  # comment\ny = [i**2 for i in range(10)]",
    "fn main() -> Result<(), Box<dyn Error>> { Ok(()) }",
    "$ ls -la | grep '.txt' > out.log 2>&1",
    "if (a && b || !c) { x = y ? z : w; }",
    "    indented\n        more\n    back",
    "lambda x: x if x else None",
]
WHITESPACE = (
    [" " * n for n in range(1, 17)] + ["\t" * n for n in range(1, 5)] + ["\n" * n for n in range(1, 5)] +
    ["a" + " " * n + "b" for n in range(1, 9)] + [" lead", "trail ", "  both  ", "\r\n", "a\r\nb",
     " \n \n ", "\t \t", "line1\n\nline2\n\n\nline3", "\u00a0nbsp", "ideographic\u3000space",
     "sep\u2028line", "x\u2009y"]
)
DIGITS = [
    "0", "7", "42", "123", "1234", "12345", "1234567890", "3.14159", "-273.15", "1,234,567.89",
    "+1 (555) 010-9999", "2026-11-22", "12:34:56", "1e-10", "0xFF", "100%", "$19.99", "½ ¼ ¾",
    "١٢٣", "一二三", "第3章", "v2.15.0", "10^6",
]
PUNCTUATION = [
    "!!!", "...", "?!", "''", '""', "()", "[]{}", "<>", "@#$%^&*", "--", "—", "–", "…",
    "«quoted»", "„Anführung“", "‘single’", "“double”", "¿Qué?", "¡Hola!", ";:,.", "\\/|", "~`",
]
CJK = [
    "你好，世界", "我爱自然语言处理。", "日本語のテキストです。", "東京は日本の首都です",
    "한국어 문장입니다", "漢字とかなとカナ", "中文English混合", "（全角括号）", "「引用」",
]
EMOJI = [
    "🙂", "😀😃😄", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷🇩🇪", "I ❤️ NY", "🚀 launch", "🐍 python", "✅ done",
    "🧑‍💻 coding", "👩🏿‍🔬", "©®™", "♠♥♦♣",
]
ACCENTS = [
    "café", "naïve", "résumé", "Ångström", "Zürich", "São Paulo", "Kraków", "Ελληνικά", "Русский текст",
    "e\u0301", "n\u0303", "Dvořák", "Æsir", "straße", "İstanbul", "עברית", "العربية", "हिन्दी",
]
SPECIAL = [
    "<|im_start|>user\nHello<|im_end|>", "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more", "<|im_start|><|im_end|>", "<|im_start", "im_start|>", "<|im_end|> trailing",
    "<|endoftext|>", "a<|im_start|>b<|im_end|>c", "<<|im_start|>>",
]


def random_mixtures(count, seed):
    """Seeded strings mixing every category's characters, to reach corners handwriting misses."""
    rng = random.Random(seed)
    pools = ENGLISH + CODE + WHITESPACE + DIGITS + PUNCTUATION + CJK + EMOJI + ACCENTS + SPECIAL
    chars = sorted(set("".join(pools)))
    out = []
    for i in range(count):
        if i % 2:
            out.append("".join(rng.choice(pools) for _ in range(rng.randint(2, 5))))
        else:
            out.append("".join(rng.choice(chars) for _ in range(rng.randint(1, 40))))
    return out


CORPUS = (ENGLISH + CODE + WHITESPACE + DIGITS + PUNCTUATION + CJK + EMOJI + ACCENTS + SPECIAL +
          random_mixtures(160, 20261122))


def tokenize_with_ours(path):
    """Our tokenizer of `path` (a GGUF file or a folder with tokenizer.json) over CORPUS."""
    run = subprocess.run([os.environ["ORACLE_HELPER"], "tokenize", path], capture_output=True,
                         text=True, input="".join(json.dumps({"text": s}) + "\n" for s in CORPUS),
                         check=False)
    if run.returncode != 0:
        raise RuntimeError("oracle_helper failed:\n" + run.stderr)
    # Not splitlines(): that would also split at U+2028 inside a JSON string.
    ours = [json.loads(line) for line in run.stdout.split("\n") if line]
    assert len(ours) == len(CORPUS)
    return ours


class TokenizerOracleTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        path = os.environ["APESERVE_TEST_MODEL"]
        folder, name = os.path.split(path)
        cls.reference = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        cls.ours = tokenize_with_ours(path)

    def test_corpus_is_large_enough(self):
        self.assertGreaterEqual(len(set(CORPUS)), 300)

    def test_same_ids_as_reference(self):
        mismatches = []
        for text, ours in zip(CORPUS, self.ours):
            want = self.reference.encode(text, add_special_tokens=False)
            if ours["ids"] != want:
                mismatches.append(f"{text!r}: ours {ours['ids']} reference {want}")
        self.assertEqual(mismatches, [], "\n".join(mismatches[:10]))

    def test_decode_inverts_encode(self):
        for text, ours in zip(CORPUS, self.ours):
            self.assertEqual(ours["decoded"], text)

    def test_tokenizer_json_reads_the_same(self):
        # The reference tokenizer saved as a Hugging Face folder: our tokenizer.json
        # reader must give the same ids as the GGUF one.
        with tempfile.TemporaryDirectory(prefix="apeserve-tok-") as folder:
            self.reference.save_pretrained(folder)
            from_json = tokenize_with_ours(folder)
        for text, ours, gguf in zip(CORPUS, from_json, self.ours):
            self.assertEqual(ours["ids"], gguf["ids"], repr(text))

    def test_streaming_decode_gives_the_text_back(self):
        for text, ours in zip(CORPUS, self.ours):
            self.assertEqual("".join(ours["streamed"]), text)


if __name__ == "__main__":
    unittest.main(verbosity=2)
