"""Our GGUF reader and dequantization against the gguf Python package.

For the embedded model and for a file holding random blocks of every GGML type we
read, tests/model/gguf_dump_main.cc writes each tensor dequantized by apeserve; the
gguf package reads the same file independently. Metadata must be equal, and tensor
values equal bit for bit (both follow ggml's fp32 arithmetic). Run by CTest, which
sets APESERVE_TEST_MODEL and GGUF_DUMP.
"""

import json
import os
import subprocess
import tempfile
import unittest

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize

T = GGMLQuantizationType

# Byte offsets of the fp16 scale fields of each block type (fp32 for none of these):
# random bytes there could be NaN or infinity, so they get finite values instead.
HALF_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}


def reference_values(tensor):
    """The tensor as the gguf package dequantizes it, in torch order, as float32."""
    if tensor.tensor_type in (T.F32, T.F16):
        return np.asarray(tensor.data, dtype=np.float32)
    return dequantize(tensor.data, tensor.tensor_type).astype(np.float32)


def reference_metadata(reader):
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue  # the header, which the reader exposes as pseudo-fields
        if field.types[0] == GGUFValueType.ARRAY and field.types[-1] == GGUFValueType.STRING:
            out[key] = [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data]
        else:
            out[key] = field.contents()
    return out


class GgufOracleTest(unittest.TestCase):
    def dump(self, path):
        """Runs gguf_dump on `path`; returns (index, values by tensor name)."""
        with tempfile.TemporaryDirectory(prefix="apeserve-gguf-") as tmp:
            out = os.path.join(tmp, "values.f32")
            run = subprocess.run([os.environ["GGUF_DUMP"], path, out], capture_output=True,
                                 text=True, check=False)
            self.assertEqual(run.returncode, 0, run.stderr)
            index = json.loads(run.stdout)
            flat = np.fromfile(out, dtype=np.float32)
        values = {}
        for t in index["tensors"]:
            count = int(np.prod(t["shape"]))
            values[t["name"]] = flat[t["offset"]:t["offset"] + count].reshape(t["shape"])
        return index, values

    def assert_same_tensors(self, path):
        index, ours = self.dump(path)
        reader = GGUFReader(path)
        self.assertEqual([t["name"] for t in index["tensors"]], [t.name for t in reader.tensors])
        for tensor in reader.tensors:
            want = reference_values(tensor)
            got = ours[tensor.name]
            self.assertEqual(got.shape, want.shape, tensor.name)
            # Bit for bit, NaN included.
            same = got.view(np.uint32) == want.view(np.uint32)
            if not same.all():
                diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
                self.fail(f"{tensor.name} ({tensor.tensor_type.name}): {np.count_nonzero(~same)} "
                          f"of {same.size} values differ, max |diff| {np.nanmax(diff)}")
        return index, reader

    def test_embedded_model_tensors_and_metadata(self):
        path = os.environ["APESERVE_TEST_MODEL"]
        index, reader = self.assert_same_tensors(path)
        want = reference_metadata(reader)
        got = index["metadata"]
        self.assertEqual(sorted(got), sorted(want))
        for key, value in want.items():
            if isinstance(value, float):
                self.assertAlmostEqual(got[key], value, places=6, msg=key)
            else:
                self.assertEqual(got[key], value, key)

    def test_every_type_we_read(self):
        rng = np.random.default_rng(20261122)
        with tempfile.TemporaryDirectory(prefix="apeserve-gguf-") as tmp:
            path = os.path.join(tmp, "types.gguf")
            writer = GGUFWriter(path, "llama")
            for qtype, offsets in HALF_FIELDS.items():
                block_elements, block_bytes = GGML_QUANT_SIZES[qtype]
                rows, blocks_per_row = 3, 2
                raw = rng.integers(0, 256, size=(rows, blocks_per_row, block_bytes), dtype=np.uint8)
                for offset in offsets:
                    halves = rng.uniform(-2, 2, size=(rows, blocks_per_row)).astype(np.float16)
                    raw[:, :, offset:offset + 2] = halves.view(np.uint8).reshape(rows, blocks_per_row, 2)
                writer.add_tensor(qtype.name, raw.reshape(rows, -1), raw_dtype=qtype)
            writer.add_tensor("F32", rng.standard_normal((4, 8)).astype(np.float32))
            writer.add_tensor("F16", rng.standard_normal((4, 8)).astype(np.float16))
            bf16 = (rng.standard_normal((4, 8)).astype(np.float32).view(np.uint32) >> 16)
            writer.add_tensor("BF16", bf16.astype(np.uint16).view(np.uint8), raw_dtype=T.BF16)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
            _, reader = self.assert_same_tensors(path)
            self.assertEqual(len(reader.tensors), len(HALF_FIELDS) + 3)


if __name__ == "__main__":
    unittest.main(verbosity=2)
