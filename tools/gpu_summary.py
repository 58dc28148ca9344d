"""Collect what ``tools/gpu_check.sh`` wrote into OUTDIR into summary.json and summary.md, and
print the short table (the last thing the check prints).

    python tools/gpu_summary.py OUTDIR

Reads: versions.json, status.tsv (step, status, seconds, note: one line per step, written by
the shell script), tests_*.xml (pytest junit), sanitizer_*.log (gpu_cases.py lines under
compute-sanitizer), bench.json. Missing files are reported as "not run".
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys
import xml.etree.ElementTree as ET


def _junit(path: str) -> dict:
    """Counts and the failed test ids of one pytest junit file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    counts = dict(passed=0, failed=0, skipped=0)
    failed = []
    for s in suites:
        for case in s.iter("testcase"):
            tid = f"{case.get('classname', '')}::{case.get('name', '')}"
            if case.find("failure") is not None or case.find("error") is not None:
                counts["failed"] += 1
                failed.append(tid)
            elif case.find("skipped") is not None:
                counts["skipped"] += 1
            else:
                counts["passed"] += 1
    return dict(counts, failed_ids=failed)


def _pytest_log(path: str) -> dict:
    """Counts from a ``pytest -v`` log (one status line per finished test), for a run that was
    ended before it wrote its junit file; ``partial`` says so."""
    text = open(path, errors="replace").read()
    res = {}
    for tid, st in re.findall(r"(tests/\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL)", text):
        res[tid] = st
    for st, tid in re.findall(r"(PASSED|FAILED|ERROR|SKIPPED|XFAIL) (tests/\S+::\S+)", text):
        res[tid] = st
    failed = sorted(t for t, st in res.items() if st in ("FAILED", "ERROR"))
    return dict(passed=sum(st == "PASSED" for st in res.values()), failed=len(failed),
                skipped=sum(st in ("SKIPPED", "XFAIL") for st in res.values()),
                failed_ids=failed, partial=True)


def _sanitizer(path: str) -> dict:
    """Per case PASS/FAIL from gpu_cases.py, and the tool's error summary line."""
    text = open(path, errors="replace").read()
    cases = {name: st for st, name in re.findall(r"^(PASS|FAIL) (\S+):", text, re.M)}
    m = re.search(r"ERROR SUMMARY: (\d+) error", text)
    return dict(cases=cases, errors=None if m is None else int(m.group(1)))


def collect(out: str) -> dict:
    summary = dict(steps=[], tests={}, sanitizer={}, bench=None, versions=None)
    p = os.path.join(out, "versions.json")
    if os.path.exists(p):
        summary["versions"] = json.load(open(p))
    p = os.path.join(out, "status.tsv")
    if os.path.exists(p):
        for line in open(p):
            step, status, secs, note = (line.rstrip("\n").split("\t") + ["", "", ""])[:4]
            summary["steps"].append(dict(step=step, status=status, seconds=secs, note=note))
    for p in sorted(glob.glob(os.path.join(out, "tests_*.xml"))):
        try:
            summary["tests"][os.path.basename(p)[6:-4]] = _junit(p)
        except ET.ParseError as e:  # a run killed mid-write: say so
            summary["tests"][os.path.basename(p)[6:-4]] = dict(error=f"unreadable junit: {e}")
    for p in sorted(glob.glob(os.path.join(out, "logs", "tests_*.log"))):
        name = os.path.basename(p)[6:-4]
        if name not in summary["tests"] or "error" in summary["tests"][name]:
            summary["tests"][name] = _pytest_log(p)  # no junit: the step's box ended pytest
    for p in sorted(glob.glob(os.path.join(out, "sanitizer_*.log"))):
        summary["sanitizer"][os.path.basename(p)[10:-4]] = _sanitizer(p)
    p = os.path.join(out, "bench.json")
    if os.path.exists(p):
        summary["bench"] = json.load(open(p))
    return summary


def table(summary: dict) -> list[str]:
    v = summary.get("versions") or {}
    lines = [f"device: {v.get('device', '?')} (sm_{v.get('capability', '?')}, {v.get('sms', '?')} SMs)"
             f" | torch {v.get('torch', '?')} | triton {v.get('triton', '?')} | "
             f"CUDA {v.get('cuda', '?')}", "", "| step | status | s | note |", "| --- | --- | --- | --- |"]
    for s in summary["steps"]:
        note = s["note"].replace("|", "/")  # a table cell
        lines.append(f"| {s['step']} | {s['status']} | {s['seconds']} | {note} |")
    lines += ["", "| tests | passed | failed | skipped |", "| --- | --- | --- | --- |"]
    for name, t in summary["tests"].items():
        if "error" in t:
            lines.append(f"| {name} | {t['error']} | | |")
        else:
            tag = " (from the log: the run was cut short)" if t.get("partial") else ""
            lines.append(f"| {name}{tag} | {t['passed']} | {t['failed']} | {t['skipped']} |")
            lines += [f"|   FAILED {tid} | | | |" for tid in t["failed_ids"][:20]]
    for name, s in summary["sanitizer"].items():
        bad = [c for c, st in s["cases"].items() if st != "PASS"]
        lines.append(f"sanitizer {name}: {len(s['cases'])} cases, tool errors "
                     f"{'?' if s['errors'] is None else s['errors']}, failed cases {bad or 'none'}")
    b = summary.get("bench")
    if b:
        lines += ["", "| bench | backend | mode | ms | vs cuDNN |", "| --- | --- | --- | --- | --- |"]
        for r in b["rows"]:
            if r["kind"] == "anchor" or r["T"] in (16, 1024, 4096):
                ms = "ERROR" if "error" in r else f"{r['ms']:.3f}" + ("" if r.get("parity_ok") or r["backend"] == "torch.nn" else " (parity FAIL)")
                sp = f"{r['speedup_vs_cudnn']:.2f}×" if "speedup_vs_cudnn" in r else ""
                lines.append(f"| {r['cell']} T={r['T']} H={r['H']} {r['dtype']} | {r['backend']} | "
                             f"{r['mode']} | {ms} | {sp} |")
    return lines


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__)
        return 2
    out = argv[0]
    summary = collect(out)
    with open(os.path.join(out, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    lines = table(summary)
    with open(os.path.join(out, "summary.md"), "w") as fh:
        fh.write("# tools/gpu_check.sh summary\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
