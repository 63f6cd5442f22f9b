#!/usr/bin/env python3
"""Results of launch/gpu_check.sh: merges each stage's outcome into <out>/results.json and rewrites
<out>/results.md after every stage, so that a run cut short still leaves what it measured.

    gpu_check_report.py --out DIR init [--plan ID=TITLE ...] [--carry_from FILE --carry ID ...]
        [KEY=VALUE ...]                                   fresh results.json; --carry copies those
                                                          stages (and their logs) from an earlier run
    gpu_check_report.py --out DIR meta KEY=VALUE ...                           machine, commit, ...
    gpu_check_report.py --out DIR stage ID --title T --status pass|fail|timeout|skipped
        [--seconds S] [--log FILE] [--parse KIND --input FILE] [--set KEY=VALUE ...] [--note TEXT]
        [--mem_samples FILE] [--junit FILE]
    gpu_check_report.py --out DIR render [--print]        results.md again; --print: the table
    gpu_check_report.py --out DIR verdict                 exit 0 only if every planned stage passed
    gpu_check_report.py --out DIR prior --sources STAMP   "ID STATUS" of each stage recorded in DIR,
                                                          exit 1 when DIR's run had other sources
    gpu_check_report.py --out DIR unbuilt --build B --tests J  names of the tests in J (ctest
                                                          --show-only=json-v1) needing a file under B
                                                          that is missing: not built, not to be run
--state DIR (before the command): results.json is also written there, and each stage's log copied
there, so that a rerun with the same build folder finds what passed (launch/gpu_check.sh keeps it
in <build>/gpu_check).

--parse reads what a stage left behind (KIND: ctest, memcheck, metrics, pytorch, generate,
opbench) into figures. A parser may turn a "pass" into a "fail" (a GPU test that skipped on a GPU
machine, unless it says it needs more GPUs; a sanitizer error, no metrics lines, a failed
correctness check), never the reverse.
Figures that name a kind (samout_train, pytorch_train, samout_decode, ...) are compared when the
table is drawn: samout's tokens/s over the strongest PyTorch variant that passed at the same
(batch, sequence length), and samout's decode over PyTorch's eager stateful decode.
Only the Python standard library is used: any python3 runs it.
"""
import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import sys
import tempfile

STATUSES = ("pass", "fail", "timeout", "skipped")


# ---- parsers: (figures, summary, reason-to-fail or None) ------------------------------------------

# What a test prints when it skips for want of more GPUs than one machine of gpu_check's has.
MULTI_GPU_SKIP = re.compile(r"needs (two|three|four|\d+) (or more )?GPUs", re.I)


def test_outputs(junit):
    """Each test's output, by name, from ctest's --output-junit file ({} when there is none)."""
    if not junit or not os.path.exists(junit):
        return {}
    import xml.etree.ElementTree as ET
    try:
        root = ET.parse(junit).getroot()
    except ET.ParseError:
        return {}
    return {t.get("name"): (t.findtext("system-out") or "") for t in root.iter("testcase")}


def parse_ctest(text, args):
    """ctest's output. A test that skipped counts as a failure here: these are GPU tests on a GPU;
    except one that says it needs more GPUs (--junit: ctest's JUnit file, with each test's output)."""
    tests = {}
    for line in text.splitlines():
        m = re.search(r"Test\s+#\d+:\s+(\S+)\s+\.*\s*(?:\*\*\*)?(Passed|Not Run|[A-Za-z]+)", line)
        if m:
            tests[m.group(1)] = m.group(2)
    outputs = test_outputs(getattr(args, "junit", None))
    passed = sorted(n for n, s in tests.items() if s == "Passed")
    skipped = sorted(n for n, s in tests.items() if s == "Skipped")
    multi = [n for n in skipped if MULTI_GPU_SKIP.search(outputs.get(n, ""))]
    skipped = [n for n in skipped if n not in multi]
    failed = sorted(n for n, s in tests.items() if s not in ("Passed", "Skipped"))
    fig = {"tests": len(tests), "passed": len(passed), "failed": len(failed),
           "skipped": len(skipped), "failed_tests": failed, "skipped_tests": skipped,
           "skipped_multi_gpu": multi}
    summary = f"{len(passed)}/{len(tests)} passed"
    if failed:
        summary += f"; failed: {', '.join(failed[:6])}{' ...' if len(failed) > 6 else ''}"
    if skipped:
        summary += f"; skipped: {', '.join(skipped[:6])}{' ...' if len(skipped) > 6 else ''}"
    if multi:
        summary += f"; skipped, needing more GPUs: {', '.join(multi)}"
    why = None
    if "No tests were found" in text or not tests:
        why = "no tests matched"
    elif failed:
        why = f"{len(failed)} test(s) failed"
    elif skipped:
        why = f"{len(skipped)} GPU test(s) skipped on a GPU machine"
    return fig, summary, why


def parse_memcheck(text, args):
    """compute-sanitizer around GoogleTest programs: its error summaries and gtest's counts."""
    errors = [int(x) for x in re.findall(r"ERROR SUMMARY:\s+(\d+) error", text)]
    def count(tag):
        return sum(int(x) for x in re.findall(r"\[\s*" + tag + r"\s*\]\s+(\d+) tests?", text))
    fig = {"sanitizer_errors": sum(errors), "sanitized_programs": len(errors),
           "gtest_passed": count("PASSED"), "gtest_failed": count("FAILED"),
           "gtest_skipped": count("SKIPPED")}
    summary = (f"{fig['sanitizer_errors']} memcheck errors; {fig['gtest_passed']} tests passed"
               + (f", {fig['gtest_failed']} failed" if fig["gtest_failed"] else "")
               + (f", {fig['gtest_skipped']} skipped" if fig["gtest_skipped"] else ""))
    why = None
    if not errors:
        why = "no ERROR SUMMARY from compute-sanitizer"
    elif fig["sanitizer_errors"]:
        why = f"{fig['sanitizer_errors']} memcheck error(s)"
    elif fig["gtest_failed"]:
        why = f"{fig['gtest_failed']} test(s) failed"
    elif fig["gtest_skipped"]:
        why = f"{fig['gtest_skipped']} test(s) skipped on a GPU machine"
    elif not fig["gtest_passed"]:
        why = "no test ran"
    return fig, summary, why


def _median(rows, key):
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return statistics.median(vals) if vals else None


def parse_metrics(text, args):
    """samout_ddp's --metrics_file (JSON lines). tokens/s: the median over the logged windows after
    the first --drop ones (warm-up: allocator, cuBLAS heuristics, first-step launches)."""
    rows, final = [], None
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            j = json.loads(line)
        except ValueError:
            continue
        if j.get("final"):
            final = j
        elif "tokens_per_s" in j and "step" in j:
            rows.append(j)
    if not rows:
        return {}, "no metrics lines", "no metrics lines"
    drop = args.drop if len(rows) > args.drop else 0
    used = rows[drop:]
    fig = {"tokens_per_s": _median(used, "tokens_per_s"), "step_ms": _median(used, "step_ms"),
           "windows": len(used), "dropped_windows": drop, "last_step": rows[-1]["step"],
           "loss_first": rows[0].get("loss"), "loss_last": rows[-1].get("loss")}
    for k in ("mfu", "data_ms", "compute_ms", "comm_wait_ms", "optimizer_ms"):
        v = _median(used, k)
        if v is not None:
            fig[k] = v
    peaks = [r["peak_mem_mb"] for r in rows + ([final] if final else [])
             if isinstance(r.get("peak_mem_mb"), (int, float))]
    if peaks:
        fig["peak_mem_mb"] = max(peaks)
    if final:
        fig["mean_tokens_per_s"] = final.get("mean_tokens_per_s")
        fig["wall_s"] = final.get("wall_s")
    summary = f"{fig['tokens_per_s']:,.0f} tok/s"
    if fig["step_ms"] is not None:
        summary += f", {fig['step_ms']:.1f} ms/step"
    if "mfu" in fig:
        summary += f", MFU {100 * fig['mfu']:.1f}%"
    why = None
    loss = fig["loss_last"]
    if not isinstance(loss, (int, float)) or loss != loss or abs(loss) == float("inf"):
        why = f"loss not finite ({loss})"
    return fig, summary, why


def parse_pytorch(text, args):
    """pytorch_seed_loop.py: its last line is one JSON object."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                j = json.loads(line)
                break
            except ValueError:
                continue
    else:
        return {}, "no result line", "no result line"
    fig = {k: v for k, v in j.items() if not isinstance(v, (dict, list))}
    if "peak_mem_bytes" in j:
        fig["peak_mem_mb"] = j["peak_mem_bytes"] / 2**20
    parts = []
    if j.get("steps", 0) and "tokens_per_s" in j:
        parts.append(f"{j['tokens_per_s']:,.0f} tok/s, {j.get('step_ms', float('nan')):.1f} ms/step")
        if j.get("compile", "none") != "none" and "warmup_s" in j:
            parts.append(f"warm-up incl. compile {j['warmup_s']:.0f} s")
    if "decode_tokens_per_s" in j:
        parts.append(f"decode {j['decode_ms_per_token']:.2f} ms/token ({j['decode_tokens_per_s']:,.0f}/s)")
    return fig, ", ".join(parts) or "no figures", None if parts else "no figures"


def parse_generate(text, args):
    """bench_generate's table: per context, ms/token (median and mean) and tokens/s."""
    per = []
    for line in text.splitlines():
        m = re.match(r"^\s*(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$", line)
        if m:
            c, pre, med, mean, tps, vs = m.groups()
            per.append({"context": int(c), "prefill_ms": float(pre), "ms_per_token": float(med),
                        "ms_per_token_mean": float(mean), "tokens_per_s_mean": float(tps),
                        "vs_read": float(vs)})
    if not per:
        return {}, "no per-context table", "no per-context table"
    med = statistics.median(p["ms_per_token"] for p in per)
    fig = {"contexts": per, "ms_per_token": med, "tokens_per_s": 1000.0 / med}
    m = re.search(r"baseline: read the ([\d.]+) MB .*?: ([\d.]+) ms median of \d+ \(([\d.]+) GB/s\)", text)
    if m:
        fig.update(read_mb=float(m.group(1)), read_ms=float(m.group(2)), read_gb_s=float(m.group(3)))
    m = re.search(r"flatness: .*? = ([\d.]+)", text)
    if m:
        fig["flatness"] = float(m.group(1))
    m = re.search(r"with sampling .*?: ([\d.]+) ms/token median, ([\d.]+) tokens/s", text)
    if m:
        fig.update(sampling_ms_per_token=float(m.group(1)), sampling_tokens_per_s=float(m.group(2)))
    summary = (f"{fig['tokens_per_s']:,.0f} tok/s ({med:.3f} ms/token, median over contexts "
               f"{','.join(str(p['context']) for p in per)})")
    if "flatness" in fig:
        summary += f", flatness {fig['flatness']:.2f}"
    return fig, summary, None


def parse_opbench(text, args):
    """bench_cummax_gate --json: per (shape, dtype), fused and composite ms/GB/s and a D2D copy."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        return {}, "unreadable JSON", f"unreadable JSON ({e})"
    rows = []
    for r in doc.get("results", []):
        shape = "x".join(str(x) for x in r.get("shape", []))
        copy = r.get("copy", {})
        for m in r.get("measurements", []):
            fused = m.get("fused", {}) if isinstance(m.get("fused"), dict) else {}
            comp = m.get("composite", {}) if isinstance(m.get("composite"), dict) else {}
            rows.append({"shape": shape, "dtype": r.get("dtype"), "what": m.get("what"),
                         "fused_ms": fused.get("ms", m.get("fused_ms")),
                         "fused_gb_s": fused.get("gb_s"),
                         "fused_of_copy": fused.get("fraction_of_copy"),
                         "composite_ms": comp.get("ms", m.get("composite_ms")),
                         "composite_over_fused": m.get("composite_over_fused"),
                         "copy_gb_s": copy.get("gb_s")})
    if not rows:
        return {"doc": doc}, "no results", "no results"
    fig = {"rows": rows, "check_ok": doc.get("check_ok"), "device_name": doc.get("device_name")}
    fb = [r for r in rows if r["what"] == "fwd_bwd"]
    parts = []
    for r in fb:
        s = f"{r['shape']} {r['dtype']} fwd+bwd {r['fused_ms']:.3f} ms"
        if r["fused_gb_s"]:
            s += f" ({r['fused_gb_s']:.0f} GB/s"
            s += f", {100 * r['fused_of_copy']:.0f}% of copy)" if r["fused_of_copy"] else ")"
        parts.append(s)
    why = None if doc.get("check_ok", True) else "fused and composite disagree"
    return fig, "; ".join(parts) or f"{len(rows)} measurements", why


PARSERS = {"ctest": parse_ctest, "memcheck": parse_memcheck, "metrics": parse_metrics,
           "pytorch": parse_pytorch, "generate": parse_generate, "opbench": parse_opbench}


# ---- the results file -----------------------------------------------------------------------------

def load(out):
    path = os.path.join(out, "results.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"meta": {}, "plan": [], "stages": []}


def write_json(folder, res):
    os.makedirs(folder, exist_ok=True)
    # Write then rename: a run killed mid-write never leaves half a file.
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".results.json.")
    with os.fdopen(fd, "w") as f:
        json.dump(res, f, indent=1, default=str)
        f.write("\n")
    os.replace(tmp, os.path.join(folder, "results.json"))


def save(out, res, state=None):
    write_json(out, res)
    if state and os.path.abspath(state) != os.path.abspath(out):
        write_json(state, res)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".results.md.")
    with os.fdopen(fd, "w") as f:
        f.write(markdown(res))
    os.replace(tmp, os.path.join(out, "results.md"))


def value(text):
    try:
        return json.loads(text)
    except ValueError:
        return text


def kv_pairs(items):
    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep:
            sys.exit(f"gpu_check_report: expected KEY=VALUE, got '{item}'")
        out[k] = value(v)
    return out


# ---- comparisons ----------------------------------------------------------------------------------

def variant_name(f):
    name = f.get("precision", "?")
    c = f.get("compile", "none")
    name += " eager" if c in (None, "none") else f" compile {c}"
    if f.get("fused_adam"):
        name += " + fused Adam"
    return name


def comparison(stage, stages):
    """The 'vs PyTorch' cell of a samout stage, and its figures."""
    f = stage.get("figures", {})
    if stage.get("status") != "pass":
        return "", {}
    ok = [s for s in stages if s.get("status") == "pass"]
    if f.get("kind") == "samout_train" and f.get("tokens_per_s"):
        peers = [s["figures"] for s in ok if s["figures"].get("kind") == "pytorch_train"
                 and s["figures"].get("batch_size") == f.get("batch_size")
                 and s["figures"].get("seq_len") == f.get("seq_len")
                 and s["figures"].get("tokens_per_s")]
        if not peers:
            return "no PyTorch peer measured", {}
        best = max(peers, key=lambda p: p["tokens_per_s"])
        r = f["tokens_per_s"] / best["tokens_per_s"]
        cell = f"{r:.2f}x the strongest, {variant_name(best)} ({best['tokens_per_s']:,.0f} tok/s)"
        cmp = {"vs": variant_name(best), "peer_tokens_per_s": best["tokens_per_s"], "ratio": r}
        if f.get("peak_mem_mb") and best.get("peak_mem_mb"):
            cmp["memory_ratio"] = f["peak_mem_mb"] / best["peak_mem_mb"]
            cell += f"; memory {cmp['memory_ratio']:.2f}x"
        return cell, cmp
    if f.get("kind") == "samout_decode" and f.get("tokens_per_s"):
        peers = [s["figures"] for s in ok if s["figures"].get("decode_tokens_per_s")]
        if not peers:
            return "no PyTorch peer measured", {}
        best = max(peers, key=lambda p: p["decode_tokens_per_s"])
        r = f["tokens_per_s"] / best["decode_tokens_per_s"]
        return (f"{r:.2f}x PyTorch eager stateful decode ({best['decode_tokens_per_s']:,.0f} tok/s)",
                {"vs": "pytorch eager decode", "peer_tokens_per_s": best["decode_tokens_per_s"],
                 "ratio": r})
    if f.get("kind") == "samout_op" and f.get("rows"):
        fb = [r for r in f["rows"] if r.get("what") == "fwd_bwd" and r.get("composite_over_fused")]
        if fb:
            return ("fwd+bwd vs ATen composite: " + ", ".join(
                f"{r['shape']} {r['dtype']} {r['composite_over_fused']:.2f}x" for r in fb), {})
    return "", {}


# ---- Markdown -------------------------------------------------------------------------------------

def fmt_seconds(s):
    if not isinstance(s, (int, float)):
        return ""
    return f"{s:.0f} s" if s < 120 else f"{int(s) // 60} min {int(s) % 60:02d} s"


def figure_cell(stage):
    f = stage.get("figures", {})
    cell = stage.get("summary", "")
    if f.get("peak_mem_mb"):
        cell += f", peak {f['peak_mem_mb'] / 1024:.2f} GiB"
    if f.get("smi_peak_mib"):
        cell += f" (nvidia-smi {f['smi_peak_mib'] / 1024:.1f} GiB)"
    if stage.get("note"):
        cell += (" — " if cell else "") + stage["note"]
    if stage.get("carried_from"):
        cell += (" — " if cell else "") + f"passed in the earlier run of {stage['carried_from']}"
    return cell.replace("|", "\\|").replace("\n", " ")


def table_rows(res):
    stages = res.get("stages", [])
    by_id = {s["id"]: s for s in stages}
    rows, seen = [], set()
    for pid, title in res.get("plan", []):
        s = by_id.get(pid)
        seen.add(pid)
        if s is None:
            rows.append((title, "not run", "", "", ""))
        else:
            cmp, _ = comparison(s, stages)
            rows.append((s.get("title") or title, s["status"], fmt_seconds(s.get("seconds")),
                         figure_cell(s), cmp))
    for s in stages:
        if s["id"] not in seen:
            cmp, _ = comparison(s, stages)
            rows.append((s.get("title", s["id"]), s["status"], fmt_seconds(s.get("seconds")),
                         figure_cell(s), cmp))
    return rows


def render_table(rows):
    lines = ["| stage | status | time | figures | vs PyTorch |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join(r) + " |")
    return "\n".join(lines) + "\n"


def markdown(res):
    meta = res.get("meta", {})
    out = ["# gpu_check results\n"]
    keys = ["card", "driver", "cuda", "memory", "torch", "python", "nvcc", "cmake", "commit", "date",
            "host", "budget_s", "wall_s", "build_dir"]
    for k in keys + sorted(k for k in meta if k not in keys):
        if k in meta and meta[k] not in ("", None):
            v = fmt_seconds(meta[k]) if k in ("budget_s", "wall_s") else meta[k]
            out.append(f"- {k}: {v}")
    out.append("")
    rows = table_rows(res)
    out.append(render_table(rows))
    for s in res.get("stages", []):
        if s.get("figures", {}).get("kind") == "samout_op" and s["figures"].get("rows"):
            out.append(f"\n## {s.get('title', s['id'])}\n")
            out.append("| shape | dtype | what | fused ms | fused GB/s | of D2D copy | composite ms "
                       "| composite/fused |")
            out.append("|---|---|---|---|---|---|---|---|")
            for r in s["figures"]["rows"]:
                def n(x, f):
                    return format(x, f) if isinstance(x, (int, float)) else ""
                out.append(f"| {r['shape']} | {r['dtype']} | {r['what']} | {n(r['fused_ms'], '.3f')} "
                           f"| {n(r['fused_gb_s'], '.0f')} | {n(r['fused_of_copy'], '.2f')} "
                           f"| {n(r['composite_ms'], '.3f')} | {n(r['composite_over_fused'], '.2f')} |")
    logs = [(s.get("title", s["id"]), s["log"]) for s in res.get("stages", []) if s.get("log")]
    if logs:
        out.append("\n## Logs\n")
        out.extend(f"- {t}: `{l}`" for t, l in logs)
    return "\n".join(out) + "\n"


# ---- commands -------------------------------------------------------------------------------------

def copy_log(rel, src_root, dst_root):
    """Copies src_root/rel to dst_root/rel (a stage's log, relative to its run's folder)."""
    if not rel or os.path.isabs(rel):
        return
    src, dst = os.path.join(src_root, rel), os.path.join(dst_root, rel)
    if os.path.isfile(src) and os.path.abspath(src) != os.path.abspath(dst):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(src, dst)


def cmd_init(args):
    res = {"meta": kv_pairs(args.pairs), "plan": [], "stages": []}
    for p in args.plan or []:
        pid, _, title = p.partition("=")
        res["plan"].append([pid, title or pid])
    res["meta"].setdefault("date", datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
    if args.carry:
        # A rerun: the stages that passed before keep their record (and their log) in this run's
        # table, marked with the date of the run that measured them.
        prev = load(os.path.dirname(os.path.abspath(args.carry_from)))
        by_id = {s["id"]: s for s in prev.get("stages", [])}
        for sid in args.carry:
            s = by_id.get(sid)
            if s is None or s.get("status") != "pass":
                sys.exit(f"gpu_check_report: no passed stage {sid} in {args.carry_from}")
            s = dict(s)
            s.setdefault("carried_from", prev.get("meta", {}).get("date", "?"))
            copy_log(s.get("log"), os.path.dirname(os.path.abspath(args.carry_from)), args.out)
            res["stages"].append(s)
    save(args.out, res, args.state)


def cmd_meta(args):
    res = load(args.out)
    res["meta"].update(kv_pairs(args.pairs))
    save(args.out, res, args.state)


def cmd_stage(args):
    res = load(args.out)
    st = {"id": args.id, "title": args.title or args.id, "status": args.status,
          "figures": kv_pairs(args.set), "summary": args.summary or ""}
    if args.seconds is not None:
        st["seconds"] = args.seconds
    if args.log:
        st["log"] = os.path.relpath(args.log, args.out) if os.path.isabs(args.log) else args.log
    notes = [args.note] if args.note else []
    if args.parse:
        text = ""
        if args.input and os.path.exists(args.input):
            with open(args.input, errors="replace") as f:
                text = f.read()
        if text:
            try:
                fig, summary, why = PARSERS[args.parse](text, args)
            except Exception as e:  # an output this helper did not expect: keep the stage, say so
                fig, summary, why = {}, "", f"could not read {args.input}: {type(e).__name__}: {e}"
            st["figures"].update(fig)
            st["summary"] = summary if not st["summary"] else st["summary"] + "; " + summary
            if why and st["status"] == "pass":
                st["status"] = "fail"
                notes.append(why)
            elif why and st["status"] != "skipped":
                notes.append(why)
        elif st["status"] == "pass":
            st["status"] = "fail"
            notes.append(f"no output to read ({args.input})")
    if args.mem_samples and os.path.exists(args.mem_samples):
        with open(args.mem_samples) as f:
            vals = [float(x) for x in re.findall(r"^\s*(\d+(?:\.\d+)?)\s*$", f.read(), re.M)]
        if vals:
            st["figures"]["smi_peak_mib"] = max(vals)
    if notes:
        st["note"] = "; ".join(notes)
    res["stages"] = [s for s in res["stages"] if s["id"] != args.id] + [st]
    # Ratios are derived data: stored with the stage for readers of the JSON.
    for s in res["stages"]:
        _, cmp = comparison(s, res["stages"])
        if cmp:
            s["comparison"] = cmp
        else:
            s.pop("comparison", None)
    save(args.out, res, args.state)
    if args.state:
        copy_log(st.get("log"), args.out, args.state)
    print(f"gpu_check: [{st['status']}] {st['title']}"
          + (f" ({fmt_seconds(st.get('seconds'))})" if st.get("seconds") is not None else "")
          + (f": {figure_cell(st)}" if figure_cell(st) else ""), flush=True)


def cmd_render(args):
    res = load(args.out)
    save(args.out, res, args.state)
    if args.print:
        print(render_table(table_rows(res)), end="")


def cmd_verdict(args):
    """Exit 0 when every planned stage passed, else 1, naming those that did not."""
    res = load(args.out)
    done = {s["id"]: s["status"] for s in res.get("stages", [])}
    ids = [pid for pid, _ in res.get("plan", [])] or list(done)
    bad = [f"{i}={done.get(i, 'not run')}" for i in ids if done.get(i) != "pass"]
    if bad or not ids:
        print("gpu_check: not passed: " + (" ".join(bad) or "no stage ran"))
        sys.exit(1)
    print(f"gpu_check: every stage passed ({len(ids)})")


def cmd_prior(args):
    """What an earlier run in this folder recorded, for a rerun to skip what passed; exit 1 when
    there is none or it ran on other sources (its results no longer hold)."""
    if not os.path.exists(os.path.join(args.out, "results.json")):
        sys.exit(1)
    res = load(args.out)
    if res.get("meta", {}).get("sources") != args.sources:
        sys.exit(1)
    for s in res.get("stages", []):
        print(s["id"], s["status"])


def cmd_unbuilt(args):
    """Tests whose program ctest cannot find, or that name a file under the build folder (their
    program, a library in their environment) that does not exist: their target was not built."""
    with open(args.tests) as f:
        doc = json.load(f)
    build = os.path.abspath(args.build).rstrip("/") + "/"
    for t in doc.get("tests", []):
        words = list(t.get("command") or [])
        if not words:  # ctest found no program to run
            print(t["name"])
            continue
        for prop in t.get("properties", []):
            v = prop.get("value")
            words += v if isinstance(v, list) else [v]
        for w in words:
            if not isinstance(w, str):
                continue
            path = w.split("=", 1)[1] if "=" in w and not w.startswith("/") else w
            if path.startswith(build) and not os.path.exists(path):
                print(t["name"])
                break


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="the run's folder (results.json, results.md)")
    p.add_argument("--state", help="also keep results.json and the logs here (for a rerun)")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("init")
    s.add_argument("--plan", action="append", help="ID=TITLE of a stage to come, in order")
    s.add_argument("--carry_from", help="an earlier run's results.json")
    s.add_argument("--carry", action="append", help="ID of a stage that passed there, kept")
    s.add_argument("pairs", nargs="*")
    s = sub.add_parser("meta")
    s.add_argument("pairs", nargs="*")
    s = sub.add_parser("stage")
    s.add_argument("id")
    s.add_argument("--title")
    s.add_argument("--status", required=True, choices=STATUSES)
    s.add_argument("--seconds", type=float)
    s.add_argument("--log")
    s.add_argument("--parse", choices=sorted(PARSERS))
    s.add_argument("--input", help="the file --parse reads (default: --log)")
    s.add_argument("--set", action="append", help="KEY=VALUE figure (JSON values allowed)")
    s.add_argument("--summary")
    s.add_argument("--note")
    s.add_argument("--mem_samples", help="nvidia-smi memory.used samples (MiB, one a line)")
    s.add_argument("--drop", type=int, default=2, help="metrics: warm-up windows left out")
    s.add_argument("--junit", help="ctest: its --output-junit file (each test's output)")
    s = sub.add_parser("render")
    s.add_argument("--print", action="store_true")
    sub.add_parser("verdict")
    s = sub.add_parser("prior")
    s.add_argument("--sources", required=True, help="the stamp of the sources now")
    s = sub.add_parser("unbuilt")
    s.add_argument("--build", required=True)
    s.add_argument("--tests", required=True, help="ctest --show-only=json-v1's output")
    args = p.parse_args(argv)
    if args.cmd == "stage" and args.parse and not args.input:
        args.input = args.log
    if args.cmd == "init" and args.carry and not args.carry_from:
        p.error("--carry needs --carry_from")
    {"init": cmd_init, "meta": cmd_meta, "stage": cmd_stage, "render": cmd_render,
     "verdict": cmd_verdict, "prior": cmd_prior, "unbuilt": cmd_unbuilt}[args.cmd](args)


if __name__ == "__main__":
    main()
