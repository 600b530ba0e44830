"""The `rest` console script: run, grow, improve, eval, generate, inspect, report, reward, model.

    rest run --config configs/numbers.yaml --run runs/numbers [key.sub=value ...]
    rest grow --run runs/numbers          rest improve --run runs/numbers
    rest eval --run runs/numbers [--policy improve-2-2] [--data FILE.parquet]
    rest inspect runs/numbers

Bad input (a `RestError`) prints one line that says what to fix and exits with code 2.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from rest.artifacts.run import SUMMARY_ROWS
from rest.cli.evaluate import cmd_eval, cmd_generate
from rest.cli.inspect import cmd_inspect
from rest.cli.model import cmd_model
from rest.cli.pipeline import cmd_pipeline
from rest.cli.report import cmd_report
from rest.cli.reward import cmd_reward
from rest.cli.signals import Stopping
from rest.errors import OS_ERROR_FIXES, RestError


def _setup_logging() -> None:
    logger = logging.getLogger("rest")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[rest] %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rest", description="Reinforced Self-Training: Grow/Improve as a Prefect pipeline"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    helps = {
        "run": "the whole pipeline: policy-0, G x (Grow, Improve steps), test of the best policy",
        "grow": "one more Grow step on an existing run",
        "improve": "the Improve steps of the latest Grow step",
        "eval": "evaluate a policy of a run on a Parquet/JSONL file; prints JSON",
        "generate": "best-of-N outputs of a policy for a Parquet/JSONL file of sources, with every candidate's reward",
    }
    for name, text in helps.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--run", required=True, help="run directory, e.g. runs/numbers")
        p.add_argument(
            "--config",
            help="YAML config (default: the run's config.yaml)" + ("; required for a new run" if name == "run" else ""),
        )
        p.add_argument(
            "overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. grow.num_samples=4"
        )
        if name in ("eval", "generate"):
            p.add_argument("--policy", help="policy directory name (default: the run's best policy)")
            if name == "eval":
                p.add_argument("--data", help="file with `source` and `reference` columns (default: data.test)")
            else:
                p.add_argument("--data", required=True, help="file with a `source` column (`reference` optional)")
                p.add_argument("--out", required=True, help="the Parquet file to write")
            p.add_argument(
                "--best-of-n",
                type=int,
                default=0 if name == "eval" else None,
                required=name == "generate",
                metavar="K",
                help="sample K outputs per source and keep the one the reward likes best"
                + (" (default: greedy decoding)" if name == "eval" else ""),
            )
            p.add_argument(
                "--reward",
                default="learned" if name == "generate" else "chrf",
                help="what picks the best: chrf, bleu, ter, exact_match (need references) or learned "
                "(default: %(default)s)",
            )
            p.add_argument(
                "--reward-model", help="reward-model artifact for --reward learned (default: reward.learned of the run)"
            )
            p.add_argument(
                "--temperature", type=float, help="sampling temperature (default: grow.temperature of the run)"
            )
            p.add_argument("--seed", type=int, help="sampling seed (default: derived from the run's seed and K)")
    p = sub.add_parser("reward", help="reward models and servers: `rest reward train|serve --config FILE`")
    rsub = p.add_subparsers(dest="reward_command", required=True)
    p = rsub.add_parser(
        "train", help="train a reward model on Grow shards; writes an artifact (default: the config's `out`)"
    )
    p.add_argument("--config", required=True, help="YAML reward-model config, e.g. configs/reward-numbers.yaml")
    p.add_argument("--out", help="artifact directory (default: `out` of the config)")
    p.add_argument(
        "overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. objective=bradley_terry"
    )
    p = rsub.add_parser("serve", help="serve a run config's reward over HTTP (the protocol of reward.servers)")
    p.add_argument("--config", required=True, help="YAML run config whose `reward` is served")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free one; the line it prints says which)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. device=cuda")
    p = sub.add_parser("model", help="models from other formats: `rest model import FILE.gguf DIR`")
    msub = p.add_subparsers(dest="model_command", required=True)
    p = msub.add_parser("import", help="write a GGUF file's model and tokenizer as a transformers checkpoint")
    p.add_argument("file", help="the .gguf file (llama.cpp's format; its weights are de-quantized to float32)")
    p.add_argument("out", help="the checkpoint directory to write (model.pretrained then names it)")
    p = sub.add_parser("inspect", help="one table row per artifact of a run")
    p.add_argument("run", help="run directory")
    p.add_argument("--json", action="store_true", help="print the rows as JSON (every row)")
    p.add_argument(
        "--all", action="store_true", help=f"every row (a run of more than {SUMMARY_ROWS} Grow steps is summarised)"
    )
    p = sub.add_parser("report", help="write RUN/report/index.html: plots, monitors, samples, lineage")
    p.add_argument("run", help="run directory")
    p.add_argument("--json", action="store_true", help="also print the verdicts and monitor lines as JSON")
    return parser


# What each command runs (run, grow and improve are the pipeline's flows).
COMMANDS = {
    "inspect": cmd_inspect,
    "report": cmd_report,
    "eval": cmd_eval,
    "generate": cmd_generate,
    "reward": cmd_reward,
    "model": cmd_model,
    "run": cmd_pipeline,
    "grow": cmd_pipeline,
    "improve": cmd_pipeline,
}


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `rest inspect RUN | head` ends quietly
    args = build_parser().parse_args(argv)
    _setup_logging()
    stopping = Stopping()
    stopping.install()
    try:
        COMMANDS[args.command](args)
    except RestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in OS_ERROR_FIXES:
            raise
        where = exc.filename or getattr(args, "run", "")
        print(f"error: {where}: {exc.strerror}; {OS_ERROR_FIXES[exc.errno]}", file=sys.stderr)
        return 2
    except BaseException as exc:
        stopping.exit_if_stopped(exc)  # interrupted: one line; exit without a traceback or waiting for threads
        raise
    return 0
