"""Hostile import files at the size limits: how long `guildtune dataset import` takes to answer each.

Every class of tests/hostile_files.py is written at its `limit` size (storage/limits.py's limits: a 64 MiB
file, 100,000 rows, 1,000 columns, 64 levels, ...) and at a quarter of it, then imported by the real CLI in a
fresh child process (a new database each time). Printed, slowest first: the size, the seconds to answer
(reading and checking the file until it is refused or accepted; interpreter start-up excluded), the peak
memory of the child, the growth from a quarter of the size to the full size (about 4 when the work is
linear in the input, 16 when quadratic), and the ratio to the baseline measured in the same run: an ordinary
alpaca JSON file of the same 64 MiB and 100,000 rows. Target: every answer under 5 s here.

Accepted rows are counted but not written: storing 100,000 rows is the write path's cost (issue 11's
import-lock item), not the answer's. `--with-writes` writes them too and reports that time apart.

Usage: .venv/bin/python bench/hostile_inputs.py [--only SUBSTRING] [--with-writes]
                                                [--json bench/results/hostile_inputs.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from hostile_files import CASES, ROOM, Case  # noqa: E402

from storage.limits import MAX_IMPORT_ROWS  # noqa: E402

TARGET_S = 5.0
CHILD = "--child"


def baseline_json(folder: Path, n_rows: int) -> Path:
    """An ordinary alpaca file: n_rows rows filling ROOM bytes (plain sentences, nothing hostile)."""
    words = "the guild meets on friday at nine in the main hall and new members are welcome ".split()
    per_row = ROOM // n_rows - 60
    text = " ".join(words * (per_row // 60 + 1))
    rows = [{"instruction": f"Question {i}: when and where?", "output": text[: per_row - 40 - (i % 7)] + f" ({i})"}
            for i in range(n_rows)]
    path = folder / "ordinary.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def child(path: str, db: str, write: bool) -> None:
    """Import `path` the way a user does, timing the whole command and (apart) its database write."""
    os.environ["GUILDTUNE_DB"] = db
    from typer.testing import CliRunner

    from guildtune.cli import app
    from storage.examples import BulkAddResult, ExampleRepository

    write_s = [0.0]
    add_many = ExampleRepository.add_many

    async def timed_add_many(self, guild_id, conversations, **kwargs):
        t0 = time.perf_counter()
        try:
            if write:
                return await add_many(self, guild_id, conversations, **kwargs)
            return BulkAddResult(len(list(conversations)), 0)  # counted, not stored
        finally:
            write_s[0] += time.perf_counter() - t0

    ExampleRepository.add_many = timed_add_many
    t0 = time.perf_counter()
    result = CliRunner().invoke(app, ["dataset", "import", "--guild", "1", path], env={"COLUMNS": "200"})
    seconds = time.perf_counter() - t0
    peak_kib = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("VmHWM:"))  # this program's peak (ru_maxrss would count the forked parent)
    print(json.dumps({"seconds": seconds, "write_s": write_s[0], "exit_code": result.exit_code, "peak_mib": peak_kib / 1024,
                      "output": result.output[-2000:],
                      "exception": None if result.exception is None or isinstance(result.exception, SystemExit)
                      else repr(result.exception)}))


def run_child(path: Path, folder: Path, write: bool) -> dict:
    db = folder / "bench.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, __file__, CHILD, str(path), str(db), "write" if write else "count"], cwd=folder,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    out, err = proc.communicate()
    try:
        answer = json.loads(out.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        answer = {"seconds": float("nan"), "write_s": 0.0, "exit_code": None, "output": "", "exception": err[-2000:],
                  "peak_mib": float("nan")}
    answer["max_rss_mib"] = answer.pop("peak_mib")
    answer["traceback"] = "Traceback" in out + err
    return answer


def plain(text: str) -> str:
    return " ".join(text.split())


def measure(case: Case, folder: Path, write: bool) -> dict:
    runs = {}
    for label, size in (("quarter", max(case.limit // 4, 1)), ("limit", case.limit)):
        path = case.write(folder, size)
        answer = run_child(path, folder, write)
        answer["bytes"] = path.stat().st_size
        answer["size"] = size
        path.unlink()
        runs[label] = answer
    full = runs["limit"]
    said = plain(full["output"])
    return {
        "case": case.name, "unit": case.unit, "size": full["size"], "bytes": full["bytes"],
        "answer_s": round(full["seconds"] - full["write_s"], 3), "db_write_s": round(full["write_s"], 3),
        "seconds": round(full["seconds"], 3),
        "max_rss_mib": round(full["max_rss_mib"], 1),
        "quarter_size": runs["quarter"]["size"],
        "quarter_answer_s": round(runs["quarter"]["seconds"] - runs["quarter"]["write_s"], 3),
        "growth": round((full["seconds"] - full["write_s"]) / (runs["quarter"]["seconds"] - runs["quarter"]["write_s"]), 2),
        "exit_code": full["exit_code"], "expected_exit_code": case.exit_code,
        "answered_as_expected": (full["exit_code"] == case.exit_code and not full["traceback"]
                                 and full["exception"] is None and all(plain(w) in said for w in case.says)),
        "message": said[:300],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="run only the cases whose name contains this")
    parser.add_argument("--with-writes", action="store_true", help="write accepted rows to the database too")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "hostile_inputs.json")
    args = parser.parse_args()
    cases = [c for c in CASES if args.only is None or args.only in c.name]
    with tempfile.TemporaryDirectory(prefix="hostile-bench-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        load_at_start = round(os.getloadavg()[0], 2)
        base_path = baseline_json(folder, MAX_IMPORT_ROWS)
        base = run_child(base_path, folder, args.with_writes)
        baseline = {"case": "baseline: ordinary alpaca JSON", "bytes": base_path.stat().st_size,
                    "rows": MAX_IMPORT_ROWS, "seconds": round(base["seconds"], 3),
                    "db_write_s": round(base["write_s"], 3), "read_and_check_s": round(base["seconds"] - base["write_s"], 3),
                    "max_rss_mib": round(base["max_rss_mib"], 1), "exit_code": base["exit_code"]}
        base_path.unlink()
        print(f"baseline: ordinary alpaca JSON, {baseline['bytes'] / 2**20:.1f} MiB, {MAX_IMPORT_ROWS:,} rows: "
              f"{baseline['seconds']:.2f} s ({baseline['read_and_check_s']:.2f} s reading and checking, "
              f"{baseline['db_write_s']:.2f} s writing), {baseline['max_rss_mib']:.0f} MiB peak, exit {base['exit_code']}",
              flush=True)
        results = []
        for case in cases:
            row = measure(case, folder, args.with_writes)
            row["ratio_to_baseline"] = round(row["answer_s"] / baseline["read_and_check_s"], 3)
            results.append(row)
            print(f"  {row['answer_s']:6.2f} s  {case.name}", flush=True)
        wall = time.perf_counter() - t0
    results.sort(key=lambda r: r["answer_s"], reverse=True)
    print(f"\n{'answer s':>8} {'write s':>8} {'MiB':>6} {'growth x4':>9} {'/base':>6}  {'size':>22} {'file':>10}  case")
    for r in results:
        print(f"{r['answer_s']:8.2f} {r['db_write_s']:8.2f} {r['max_rss_mib']:6.0f} {r['growth']:9.2f} "
              f"{r['ratio_to_baseline'] or 0:6.2f}  {r['size']:>14,} {r['unit']:<7} {r['bytes'] / 2**20:8.1f}M  "
              f"{r['case']}{'' if r['answered_as_expected'] else '   <-- NOT ANSWERED AS EXPECTED'}")
    slowest = results[0] if results else None
    under = all(r["answer_s"] < TARGET_S for r in results)
    print(f"\nslowest: {slowest['case']} ({slowest['answer_s']:.2f} s to answer)" if slowest else "")
    print(f"every answer under {TARGET_S:.0f} s: {'yes' if under else 'NO'}; "
          f"all answered as expected: {'yes' if all(r['answered_as_expected'] for r in results) else 'NO'}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "target_s": TARGET_S, "with_writes": args.with_writes, "load_average_1m_at_start": load_at_start, "all_under_target": under, "wall_s": round(wall, 1), "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "baseline": baseline, "cases": results, "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == CHILD:
        child(sys.argv[2], sys.argv[3], sys.argv[4] == "write")
    else:
        main()
