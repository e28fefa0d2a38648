"""A stand-in for `python -m fiat_t5x.train`, used through a sweep's `command` override.

It takes the trainer's flags (`--gin_file`, `--gin.NAME=value`, `--gin_search_paths`), parses
them with gin like the trainer does, and writes `MODEL_DIR/metrics.jsonl` in the trainer's
format. Macros it reads (all optional except MODEL_DIR):
  SCORE: final value of `eval/demo/accuracy`, reached linearly over TRAIN_STEPS.
  LANG_SCORES: {language: final score} written as `eval/demo/accuracy/<language>`.
  TRAIN_STEPS: number of eval records (default 3), logged at steps 10, 20, ...
  EXIT_CODE: exit with this code after printing an error (a failing variant).
  WAIT_FOR: a path; the trainer sleeps until it exists (an interruptible long run).
  EXAMPLE_HITS: {language: "0110..."}: per-example right (1) / wrong (0) answers of the task
    `fiat_demo_plain`; the last step logs their accuracies (`eval/fiat_demo_plain/accuracy`,
    per language) and writes the per-example records a report bootstraps
    (`fiat_t5x.training.eval_records`). RECORDS_SKEW adds this much to the logged accuracy
    (records that do not reproduce their metric).
Under `launch.local`, only process 0 writes metrics. Every invocation appends a line to MODEL_DIR/invocations so tests can count runs.
"""

from __future__ import annotations

import json
import os
import sys
import time

import gin


def _query(name: str, default=None):
    try:
        return gin.query_parameter(f"%{name}")
    except ValueError:
        return default


def main(argv: list[str]) -> int:
    files, bindings = [], []
    for arg in argv:
        if arg.startswith("--gin_file="):
            files.append(arg.split("=", 1)[1])
        elif arg.startswith("--gin."):
            bindings.append(arg[len("--gin.") :])
        elif arg.startswith("--gin_search_paths="):
            for path in arg.split("=", 1)[1].split(","):
                gin.add_config_file_search_path(path)
        else:
            print(f"fake_trainer: unknown flag {arg}", file=sys.stderr)
            return 2
    gin.parse_config_files_and_bindings(files, bindings)
    model_dir = _query("MODEL_DIR")
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "invocations"), "a") as f:
        f.write(f"{os.getpid()}\n")
    print(f"fake_trainer: training into {model_dir}", flush=True)
    wait_for = _query("WAIT_FOR")
    if wait_for:
        while not os.path.exists(wait_for):
            time.sleep(0.05)
    code = int(_query("EXIT_CODE", 0))
    if code:
        print("fake_trainer: simulated failure", file=sys.stderr)
        return code
    if os.environ.get("FIAT_PROCESS_ID", "0") != "0":
        return 0  # like the trainer, only process 0 writes metrics
    steps = int(_query("TRAIN_STEPS", 3))
    score = float(_query("SCORE", 50.0))
    lang_scores = dict(_query("LANG_SCORES", {}) or {})
    with open(os.path.join(model_dir, "metrics.jsonl"), "a") as f:
        for i in range(1, steps + 1):
            record = {
                "step": 10 * i,
                "train/loss": 1.0 / i,
                "eval/demo/accuracy": score * i / steps,
            }
            for lang, value in lang_scores.items():
                record[f"eval/demo/accuracy/{lang}"] = float(value) * i / steps
            f.write(json.dumps(record) + "\n")
    hits = dict(_query("EXAMPLE_HITS", {}) or {})
    if hits:
        _write_example_hits(model_dir, 10 * steps, hits, float(_query("RECORDS_SKEW", 0.0)))
    return 0


def _write_example_hits(model_dir: str, step: int, hits: dict, skew: float) -> None:
    from fiat_t5x.training import eval_records

    rows = []
    for language, text in sorted(hits.items()):
        for i, hit in enumerate(text):
            rows.append(
                eval_records.Record(
                    index=len(rows),
                    id=f"ex-{language}-{i:03d}",
                    target={"answer": "yes", "language": language},
                    prediction="yes" if hit == "1" else "no",
                )
            )
    eval_records.write_records(
        eval_records.records_dir(model_dir, "eval"),
        task="fiat_demo_plain",
        split="validation",
        step=step,
        rows=rows,
        imports=["fiat_tasks.demo"],
    )
    record = {"step": step}
    every = "".join(text for _, text in sorted(hits.items()))
    record["eval/fiat_demo_plain/accuracy"] = 100.0 * every.count("1") / len(every) + skew
    for language, text in hits.items():
        record[f"eval/fiat_demo_plain/accuracy/{language}"] = 100.0 * text.count("1") / len(text)
    with open(os.path.join(model_dir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
