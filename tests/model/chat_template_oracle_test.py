"""Our chat template against the Hugging Face tokenizer's rendering of the model's own
Jinja template, on the embedded model: conversations with and without a system
prompt, several turns, and with and without the generation prompt. Run by CTest,
which sets APESERVE_TEST_MODEL and ORACLE_HELPER.
"""

import json
import os
import subprocess
import unittest

from transformers import AutoTokenizer

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello?"}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "And 3+3?"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "Doc A.\n\nDoc B.\n\nWhich?"}],
    [{"role": "user", "content": "Unicode: café 你好 🙂\nnew line"}],
    [{"role": "user", "content": ""}],
]


class ChatTemplateOracleTest(unittest.TestCase):
    def test_renders_like_the_reference(self):
        path = os.environ["APESERVE_TEST_MODEL"]
        folder, name = os.path.split(path)
        reference = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        cases = [(c, g) for c in CONVERSATIONS for g in (False, True)]
        run = subprocess.run(
            [os.environ["ORACLE_HELPER"], "chat", path], capture_output=True, text=True,
            input="".join(json.dumps({"messages": c, "add_generation_prompt": g}) + "\n"
                          for c, g in cases),
            check=False)
        self.assertEqual(run.returncode, 0, run.stderr)
        ours = [json.loads(line)["text"] for line in run.stdout.split("\n") if line]
        self.assertEqual(len(ours), len(cases))
        for (conversation, generation), text in zip(cases, ours):
            want = reference.apply_chat_template(conversation, tokenize=False,
                                                 add_generation_prompt=generation)
            self.assertEqual(text, want, f"{conversation} generation={generation}")


if __name__ == "__main__":
    unittest.main(verbosity=2)
