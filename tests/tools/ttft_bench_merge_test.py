"""tools/ttft_bench.py --merge: the full run is made in three parts (rag, grid, cold) and
the README's tables come from their reports together. This test cuts the quick run's
report (one run of every part) into the three parts' reports, merges them back, and
requires the same tables and targets as the whole report gives; names each part's
machine where they differ; and refuses what must not be merged: one part twice, parts
run with other settings, a file that is no report.

Run by CTest after tools.ttft_bench_quick, whose report it reads (TTFT_BENCH_REPORT).
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "ttft_bench.py"


def part_of(row: dict) -> str:
    if row["workload"] != "grid":
        return "rag"
    return "cold" if row["tier"] == "cold" else "grid"


def merge(*paths: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), "--merge", *map(str, paths),
                           "--markdown", str(out / "tables.md"), "--plot", str(out / "plot.png")],
                          capture_output=True, text=True, timeout=300)


class MergeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.report = json.loads(Path(os.environ["TTFT_BENCH_REPORT"]).read_text())
        cls.scratch = tempfile.TemporaryDirectory(prefix="ttft-merge-")
        cls.dir = Path(cls.scratch.name)
        cls.parts = {}
        for part in ("rag", "grid", "cold"):
            rows = [row for row in cls.report["rows"] if part_of(row) == part]
            cut = {**cls.report, "part": part, "rows": rows,
                   "concurrent": cls.report["concurrent"] if part == "rag" else [],
                   "live": cls.report["live"] if part == "rag" else []}
            cls.parts[part] = cls.dir / f"{part}.json"
            cls.parts[part].write_text(json.dumps(cut))

    @classmethod
    def tearDownClass(cls) -> None:
        cls.scratch.cleanup()

    def merged(self, name: str, *paths: Path) -> tuple[str, list[str]]:
        """The tables and the sorted printed lines of a merge that must succeed."""
        out = self.dir / name
        out.mkdir(exist_ok=True)
        result = merge(*paths, out=out)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertGreater((out / "plot.png").stat().st_size, 0)
        return (out / "tables.md").read_text(), sorted(result.stdout.splitlines())

    def test_the_report_has_every_part(self) -> None:
        parts = {part_of(row) for row in self.report["rows"]}
        self.assertEqual(parts, {"rag", "grid", "cold"})
        self.assertTrue(self.report["live"])

    def test_the_parts_merged_give_the_whole_reports_tables(self) -> None:
        source = self.dir / "whole.json"
        source.write_text(json.dumps(self.report))
        expected, expected_lines = self.merged("whole", source)
        tables, lines = self.merged("parts", self.parts["rag"], self.parts["grid"], self.parts["cold"])
        self.assertEqual(tables, expected)
        self.assertEqual(lines, expected_lines)  # the same rows (in the parts' order) and targets
        for heading in ("| RAG, K =", "Live traffic on RAG", "APE cold int8", "APE warm floor",
                        "llama-server", "Where APE's time goes"):
            self.assertIn(heading, tables)

    def test_parts_from_different_machines_say_so(self) -> None:
        other = json.loads(self.parts["grid"].read_text())
        other["machine"] = {**other["machine"], "cpu": "Another CPU"}
        moved = self.dir / "grid-elsewhere.json"
        moved.write_text(json.dumps(other))
        tables, _ = self.merged("two-machines", self.parts["rag"], moved, self.parts["cold"])
        self.assertIn("the parts ran on different machines", tables)
        self.assertIn("* grid part (", tables)
        self.assertIn("Another CPU", tables)
        self.assertIn(self.report["machine"]["cpu"], tables)
        # One machine for all parts: one line, as a single report has.
        same, _ = self.merged("one-machine", self.parts["rag"], self.parts["grid"], self.parts["cold"])
        self.assertNotIn("different machines", same)
        self.assertIn("\nMachine: ", same)

    def test_one_part_alone_has_only_its_columns(self) -> None:
        tables, _ = self.merged("cold-only", self.parts["cold"])
        self.assertIn("APE cold int8", tables)
        self.assertNotIn("APE warm floor", tables)
        self.assertNotIn("SEQUENTIAL", tables)
        self.assertNotIn("| RAG, K =", tables)

    def test_a_parts_systems_run_apart_merge_too(self) -> None:
        rag = json.loads(self.parts["rag"].read_text())
        paths = []
        for name, keep in (("apeserve", lambda system: system == "apeserve"),
                           ("peers", lambda system: system != "apeserve")):
            cut = {**rag, "rows": [r for r in rag["rows"] if keep(r["system"])],
                   "concurrent": [r for r in rag["concurrent"] if keep(r["system"])],
                   "live": [r for r in rag["live"] if keep(r["system"])]}
            paths.append(self.dir / f"rag-{name}.json")
            paths[-1].write_text(json.dumps(cut))
        self.assertEqual(self.merged("rag-apart", *paths, self.parts["grid"]),
                         self.merged("rag-whole", self.parts["rag"], self.parts["grid"]))

    def test_both_flash_attention_settings_are_in_the_tables(self) -> None:
        settings = {row.get("setting") for row in self.report["rows"] if row["system"] == "llama-server"}
        self.assertEqual(settings, {"fa on", "fa off"})
        tables, _ = self.merged("settings", self.parts["rag"])
        self.assertIn("| llama-server, fa on |", tables)
        self.assertIn("| llama-server, fa off |", tables)
        self.assertIn("llama-server at its best here: fa o", tables)

    def test_refuses_one_part_twice(self) -> None:
        result = merge(self.parts["rag"], self.parts["rag"], out=self.dir)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("in part rag twice", result.stderr)

    def test_refuses_parts_run_with_other_settings(self) -> None:
        other = json.loads(self.parts["grid"].read_text())
        other["settings"]["new_tokens"] += 1
        path = self.dir / "other.json"
        path.write_text(json.dumps(other))
        result = merge(self.parts["rag"], path, out=self.dir)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("other settings", result.stderr)

    def test_refuses_what_is_no_report(self) -> None:
        for name, text in (("broken.json", '{"rows": ['), ("list.json", "[1, 2]"),
                           ("norows.json", '{"part": "rag"}')):
            path = self.dir / name
            path.write_text(text)
            result = merge(path, out=self.dir)
            self.assertNotEqual(result.returncode, 0, name)
            self.assertIn(str(path), result.stderr, name)
            self.assertNotIn("Traceback", result.stderr, name)


if __name__ == "__main__":
    unittest.main()
