"""The `zofed` command. Bad input ends in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import errno
import json
import multiprocessing
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from zofed import __version__
from zofed.errors import ZofedError

EXIT_BAD_INPUT = 2


def main(argv: Sequence[str] | None = None) -> int:
    # Nothing downloads at run time unless the user asks for it explicitly (HF_HUB_OFFLINE=0).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # the commands, not argparse's "required: command"
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    args = parser.parse_args(argv)
    try:
        _find_config_among_overrides(args)
        return args.handler(args)
    except ZofedError as error:
        print(f"zofed: error: {_one_line(str(error))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        # the reader left (`zofed list | head`): nothing more to say, and Python's exit flush must not fail too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # every replaced file is written atomically, so what is on disk is the last complete state
        where = f" writing '{error.filename}'" if error.filename else ""
        print(_one_line(f"zofed: error: the disk is full{where}; free space (or set output_dir=...) and continue with --resume"),
              file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("zofed: interrupted; continue with --resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _find_config_among_overrides(args: argparse.Namespace) -> None:
    """Overrides may come before CONFIG too: the config is the first positional that is no KEY=VALUE.

    argparse takes the first positional as CONFIG, so `zofed run rounds=2 my.yaml` needs this.
    A file that exists is the config even when its name holds an `=`.
    """
    if not (hasattr(args, "config") and hasattr(args, "overrides")):
        return
    positionals = [args.config, *args.overrides]
    index = next((i for i, value in enumerate(positionals) if "=" not in value or Path(value).is_file()), None)
    if index is None:
        raise ZofedError("no CONFIG among the arguments, only KEY=VALUE overrides; give a YAML config such as "
                         "configs/quickstart.yaml")
    args.config = positionals.pop(index)
    args.overrides = positionals


MAX_ERROR_CHARS = 1000  # a message quoting too much of some input is cut, never printed whole


def _one_line(message: str) -> str:
    """User values echoed in a message may hold newlines or control characters: show them escaped."""
    message = message if len(message) <= MAX_ERROR_CHARS else message[:MAX_ERROR_CHARS] + "..."
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in message)


class _Parser(argparse.ArgumentParser):
    """A command's positionals (config, overrides) may come before, between or after its flags.

    argparse's intermixed parsing refuses a parser with subcommands, so only the leaves use it;
    it parses in two passes through `parse_known_args`, which must then take the plain path.
    """

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing or self._subparsers is not None:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


OVERRIDES_HELP = "dotted config overrides, before or after CONFIG and the flags, e.g. rounds=2 fedmezo.lr=1e-3"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zofed", description="Zeroth-order federated fine-tuning of LLMs.",
                     epilog="`zofed COMMAND --help` describes a command.")
    parser.add_argument("--version", action="version", version=f"zofed {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a federated fine-tuning config")
    run.add_argument("config", metavar="CONFIG", help="YAML config, e.g. configs/quickstart.yaml")
    run.add_argument("overrides", metavar="KEY=VALUE", nargs="*", default=[], help=OVERRIDES_HELP)
    run.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    run.add_argument("--overwrite", action="store_true", help="delete an existing run directory and start over")
    run.add_argument("--no-progress", action="store_true", help="no live progress bar")
    run.set_defaults(handler=_run)

    compare = commands.add_parser("compare", help="run several algorithms on identical data, seeds and budgets")
    compare.add_argument("config", metavar="CONFIG", help="YAML config shared by every run")
    compare.add_argument("overrides", metavar="KEY=VALUE", nargs="*", default=[], help=OVERRIDES_HELP + " (for every run)")
    compare.add_argument("--algorithms", required=True, help="comma-separated, e.g. fedmezo,fedkseed,fedavg")
    compare.add_argument("--seeds", type=int, default=1, help="runs per algorithm, seeds config.seed, config.seed+1, ...")
    compare.add_argument("--budget", default=None,
                         help="KIND=AMOUNT per run: rounds, bytes (uplink), forward_passes or wall_s (default: the config's rounds)")
    compare.add_argument("--out", default=None, help="output directory (default compare/<config name>)")
    compare.add_argument("--no-progress", action="store_true", help="no live progress bar")
    compare.add_argument("--tune", action="store_true",
                         help="first tune each algorithm's lr on its own (zofed tune, same --trials each), then compare at the best lr")
    compare.add_argument("--trials", type=int, default=None, help="with --tune: trials per algorithm (default 8)")
    compare.add_argument("--lr-range", default=None, metavar="LOW:HIGH",
                         help="with --tune: the lr range searched, on a log scale (default 1e-5:1e-2)")
    compare.set_defaults(handler=_compare)

    _add_tune(commands)

    listing = commands.add_parser("list", help="list algorithms, models, tasks and partitioners")
    listing.set_defaults(handler=_list)

    data = commands.add_parser(
        "data", help="show how a config splits its data across clients",
        description="Load the config's data, split it into train/validation/test and partition the train set "
                    "across clients; print where each split came from, its size, and each client's size and label "
                    "counts. Trains nothing; writes nothing unless --plot is given.",
    )
    data.add_argument("--plot", metavar="FILE", default=None,
                      help="also write the per-client category distribution (Flower Datasets' plot) to FILE (.png, .pdf, .svg)")
    data.add_argument("config", metavar="CONFIG", help="YAML config, e.g. configs/quickstart.yaml")
    data.add_argument("overrides", metavar="KEY=VALUE", nargs="*", default=[],
                      help="dotted config overrides, before or after CONFIG, e.g. clients=8 partition.method=dirichlet")
    data.set_defaults(handler=_data)

    config = commands.add_parser("config", help="inspect a config")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    show = config_commands.add_parser("show", help="print the resolved config (YAML, every default filled in)")
    show.add_argument("config", metavar="CONFIG", help="YAML config, e.g. configs/quickstart.yaml")
    show.add_argument("overrides", metavar="KEY=VALUE", nargs="*", default=[], help=OVERRIDES_HELP)
    show.set_defaults(handler=_config_show)

    evaluate = commands.add_parser("eval", help="evaluate a run's weights on a data file")
    evaluate.add_argument("run_dir", help="a run directory, e.g. runs/quickstart")
    evaluate.add_argument("--task", default=None, help="task format of the data (see `zofed list`; default: the run's task)")
    evaluate.add_argument("--data", default=None, help="data file/dir or hub name (omit for the built-in task)")
    evaluate.add_argument("--weights", choices=("final", "best"), default="final")
    evaluate.add_argument("--examples", type=int, default=128, help="evaluate at most this many examples")
    evaluate.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps (default: the run's device)")
    evaluate.add_argument("--metrics", default=None,
                          help="comma-separated, of loss, exact_match, rouge_l, gsm8k_answer (default: the run's "
                               "eval.metrics on its own task, else the task's default)")
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    evaluate.set_defaults(handler=_eval)

    _add_export(commands)
    _add_generate(commands)

    flower = commands.add_parser("flower", help="start a Flower SuperLink or SuperNode for runtime=flower")
    flower_commands = flower.add_subparsers(dest="flower", required=True)
    superlink = flower_commands.add_parser("superlink", help="the server side: clients and `zofed run` connect here")
    superlink.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for other machines)")
    superlink.add_argument("--port", type=int, default=9093)
    superlink.add_argument("--ssl-certfile", default=None, help="server certificate (TLS; omit all three for insecure)")
    superlink.add_argument("--ssl-keyfile", default=None, help="server private key")
    superlink.add_argument("--ssl-ca-certfile", default=None, help="CA certificate that signed the server's")
    superlink.add_argument("--database", default=None, help="state file (default: in memory)")
    superlink.add_argument("--enable-supernode-auth", action="store_true",
                           help="accept only SuperNodes whose public key was registered (`zofed flower register`; TLS required)")
    superlink.add_argument("--insecure", action="store_true",
                           help="serve without TLS on an address other machines reach (refused otherwise)")
    superlink.set_defaults(handler=_flower_superlink)
    supernode = flower_commands.add_parser("supernode", help="one client: trains partition K of the run's data")
    supernode.add_argument("--partition-id", type=int, required=True, help="the client id this node plays")
    supernode.add_argument("--superlink", default="127.0.0.1:9093", help="HOST:PORT of the SuperLink")
    supernode.add_argument("--port", type=int, default=9094, help="port for this node's ClientApps (one per node)")
    supernode.add_argument("--model", default=None, help="node-local model path (default: the run's model)")
    supernode.add_argument("--data-path", default=None, help="node-local data path (default: the run's)")
    supernode.add_argument("--state-dir", default=None, help="keep the client's model here across rounds and restarts")
    supernode.add_argument("--root-certificates", default=None, help="CA certificate of a TLS SuperLink")
    supernode.add_argument("--auth-private-key", default=None,
                           help="this node's private key (`zofed flower keys`), for a SuperLink with --enable-supernode-auth")
    supernode.add_argument("--insecure", action="store_true",
                           help="connect without TLS to a SuperLink on another machine (refused otherwise)")
    supernode.add_argument("--cold", action="store_true",
                           help="load the model in a fresh process for every message (default: a warm worker keeps it loaded)")
    supernode.add_argument("--worker-idle-s", type=float, default=600.0, help="a warm worker exits after this many idle seconds")
    supernode.add_argument("--worker-dir", default=None, help="where the warm worker's private folder goes (default: the temp dir)")
    supernode.add_argument("--threads", type=int, default=None,
                           help="CPU threads for this node's training (default: every core); give cores / nodes when "
                                "several SuperNodes share a machine (`zofed flower up` does)")
    supernode.set_defaults(handler=_flower_supernode)
    keys = flower_commands.add_parser("keys", help="a new key pair for one SuperNode (SuperNode authentication)")
    keys.add_argument("directory", help="where to write NAME (private, mode 600) and NAME.pub")
    keys.add_argument("--name", default="supernode", help="file name of the pair (default supernode)")
    keys.set_defaults(handler=_flower_keys)
    register = flower_commands.add_parser("register", help="allow a SuperNode's public key on a SuperLink with --enable-supernode-auth")
    register.add_argument("public_key", help="the node's NAME.pub from `zofed flower keys`")
    register.add_argument("--superlink", default="127.0.0.1:9093", help="HOST:PORT of the SuperLink")
    register.add_argument("--root-certificates", default=None, help="CA certificate of the SuperLink (TLS)")
    register.set_defaults(handler=_flower_register)
    up = flower_commands.add_parser("up", help="a SuperLink and N SuperNodes on this machine (TLS, node keys) until Ctrl-C")
    up.add_argument("--nodes", type=int, required=True, help="SuperNodes to start (partitions 0..N-1)")
    up.add_argument("--dir", default=None, help="new or empty folder for certificates, keys, node state and logs (default: a temp folder)")
    up.add_argument("--port", type=int, default=9093, help="the SuperLink's port on 127.0.0.1")
    up.add_argument("--model", default=None, help="the nodes' model path (default: the run's model)")
    up.add_argument("--data-path", default=None, help="the nodes' data path (default: the run's)")
    up.add_argument("--cold", action="store_true", help="no warm workers: each message loads the model afresh")
    up.set_defaults(handler=_flower_up)

    bench = commands.add_parser("bench", help="micro-benchmarks")
    bench_commands = bench.add_subparsers(dest="bench", required=True)
    step = bench_commands.add_parser("step", help="ZO step time and memory against two forward passes")
    step.add_argument("--model", default="smollm2-135m-instruct",
                      help="comma-separated models or ladder shapes (shape:llama-3.2-1b); `ladder` for every ladder shape")
    step.add_argument("--modes", default="lora,full", help="comma-separated: lora, full")
    step.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16, fp16")
    step.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    step.add_argument("--no-reference", action="store_true", help="skip the reference MeZO step (slow on large models)")
    step.add_argument("--batch-size", type=int, default=1)
    step.add_argument("--seq-len", type=int, default=128)
    step.add_argument("--repeats", type=int, default=3)
    step.add_argument("--pool-size", type=int, default=1 << 24)
    step.add_argument("--json", action="store_true", help="one JSON object per configuration")
    step.add_argument("--out", default=None, help="also write the results (with the machine) to this JSON file")
    step.set_defaults(handler=_bench_step)
    return parser


def _run(args: argparse.Namespace) -> int:
    from zofed.config import load_config

    config = load_config(args.config, args.overrides)
    _say_unused_sections(config, args)
    options = {"resume": args.resume, "overwrite": args.overwrite, "show_progress": not args.no_progress}
    if config.runtime == "flower-sim":
        from zofed.runtime.flower.simulation import run_flower_sim

        summary = run_flower_sim(config, **options)
    elif config.runtime == "flower":
        from zofed.runtime.flower.deployment import run_flower

        summary = run_flower(config, **options)
    else:
        from zofed.runtime.driver import run_experiment

        summary = run_experiment(config, **options)
    print(json.dumps(summary, indent=2))
    where = " on the SuperLink's machine" if config.runtime == "flower" else ""
    print(f"results in {config.run_dir}/{where} (summary.json, metrics.jsonl, report.png, TensorBoard events)", file=sys.stderr)
    return 0


def _say_unused_sections(config, args: argparse.Namespace) -> None:
    """A note where the config holds other methods' sections but none for this run's algorithm: the slip of tuning
    fedmezo's section and running algorithm=fedavg on defaults. A config with a section of its own algorithm among
    others (the shipped ones keep fedkseed's and decomfl's for `zofed compare`) is read as written: no note."""
    from zofed.config import override_section, read_config_file

    written = read_config_file(args.config)
    own = (isinstance(written, dict) and config.algorithm in written) or any(
        override_section(override) == config.algorithm for override in args.overrides)
    if config.unused_sections and not own:
        print(f"zofed: not used by this run (algorithm {config.algorithm}): the config's "
              f"{', '.join(config.unused_sections)} section{'s' if len(config.unused_sections) > 1 else ''}",
              file=sys.stderr)


def _compare(args: argparse.Namespace) -> int:
    from zofed.compare import parse_budget, parse_tune, run_compare

    algorithms = [name.strip() for name in args.algorithms.split(",") if name.strip()]
    document = run_compare(
        args.config, args.overrides, algorithms, seeds=args.seeds, budget=parse_budget(args.budget),
        out=Path(args.out) if args.out else None, show_progress=not args.no_progress,
        tune=parse_tune(args.tune, args.trials, args.lr_range),
    )
    print(Path(args.out or Path("compare") / document["name"]).joinpath("results.md").read_text())
    return 0


def _add_tune(commands) -> None:
    tune = commands.add_parser(
        "tune", help="search settings with Optuna (TPE, median pruning) and write the best config",
        description="Run trials of CONFIG with the --param settings sampled by Optuna's TPE sampler, each an ordinary "
                    "run under OUT/trials/, pruning a trial whose validation loss is above the median of earlier trials "
                    "at the same round; minimises the final validation loss. Writes OUT/results.md (printed), "
                    "results.json, trials.png and best.yaml (for `zofed run`). Rerunning the same command continues "
                    "the study (OUT/study.journal).",
    )
    tune.add_argument("config", metavar="CONFIG", help="YAML config, e.g. configs/quickstart.yaml")
    tune.add_argument("overrides", metavar="KEY=VALUE", nargs="*", default=[], help=OVERRIDES_HELP + " (for every trial)")
    tune.add_argument("--param", action="append", default=[], metavar="KEY=LOW:HIGH[:log]",
                      help="a setting to search, repeatable, e.g. fedmezo.lr=1e-5:1e-2:log or local.local_steps=5:30 "
                           "(an integer setting takes integers)")
    tune.add_argument("--trials", type=int, required=True, help="finished trials (complete or pruned) the study holds at the end")
    tune.add_argument("--out", default=None, help="study directory (default tune/<config name>)")
    tune.add_argument("--no-progress", action="store_true", help="no live progress bar")
    tune.set_defaults(handler=_tune)


def _tune(args: argparse.Namespace) -> int:
    from zofed.tune import BEST_FILE, print_table, run_study

    try:
        document = run_study(args.config, args.overrides, args.param, args.trials, out=Path(args.out) if args.out else None,
                             show_progress=not args.no_progress, log=lambda line: print(line, file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        print("zofed: interrupted; rerun the same command to continue the study", file=sys.stderr)
        return 130
    print_table(document)
    out = Path(document["study"]).parent
    best = f"; the best config: `zofed run {out / BEST_FILE}`" if document["best"] else "; no trial completed, so no best config"
    print(f"results in {out}/ (results.md, results.json, trials.png){best}", file=sys.stderr)
    return 0


def _flower_superlink(args: argparse.Namespace) -> int:
    from zofed.runtime.flower.deployment import flower_env, superlink_command

    command = superlink_command(args.host, args.port, args.ssl_certfile, args.ssl_keyfile, args.ssl_ca_certfile, args.database,
                                args.enable_supernode_auth, args.insecure)
    os.execve(command[0], command, flower_env())  # becomes the SuperLink: same pid, signals reach it


def _flower_supernode(args: argparse.Namespace) -> int:
    from zofed.runtime.flower.deployment import supernode_command, supernode_env

    private_key = str(Path(args.auth_private_key).resolve()) if args.auth_private_key else None
    node_config = {"model": args.model, "data-path": args.data_path, "state-dir": args.state_dir,
                   "worker-dir": str(Path(args.worker_dir).resolve()) if args.worker_dir else None}
    # Paths that exist are made absolute (ClientApps run elsewhere); names (tiny-llama, hub ids) pass as given.
    node_config = {key: str(Path(value).resolve()) if Path(value).exists() else value
                   for key, value in node_config.items() if value is not None}
    command = supernode_command(args.partition_id, args.superlink, args.port, node_config, args.root_certificates, private_key,
                                args.insecure, worker_idle_s=None if args.cold else args.worker_idle_s)
    os.execve(command[0], command, supernode_env(args.threads))


def _flower_up(args: argparse.Namespace) -> int:
    from zofed.runtime.flower.up import flower_up

    node_args = [*(["--model", args.model] if args.model else []), *(["--data-path", args.data_path] if args.data_path else []),
                 *(["--cold"] if args.cold else [])]
    return flower_up(args.nodes, Path(args.dir) if args.dir else None, args.port, tuple(node_args))


def _flower_keys(args: argparse.Namespace) -> int:
    from zofed.runtime.flower.deployment import write_supernode_keys

    private, public = write_supernode_keys(Path(args.directory), args.name)
    # Paths only: the private key's contents never reach a terminal or a log.
    print(json.dumps({"private_key": str(private), "public_key": str(public)}))
    return 0


def _flower_register(args: argparse.Namespace) -> int:
    from zofed.runtime.flower.deployment import register_supernode

    node_id = register_supernode(args.public_key, args.superlink, args.root_certificates)
    print(json.dumps({"public_key": args.public_key, "node_id": node_id}))
    return 0


def _list(args: argparse.Namespace) -> int:
    from zofed.algorithms import ALGORITHMS
    from zofed.algorithms.base import official_defaults_text
    from zofed.data import PARTITIONERS, TASKS
    from zofed.data.partition import DESCRIPTIONS as PARTITIONER_DESCRIPTIONS
    from zofed.llm import BUILTIN_MODELS
    from zofed.llm.shapes import SHAPES

    print("algorithms:")
    for name, entry in sorted(ALGORITHMS.items()):
        print(f"  {name:14s} {entry.description}")
        weighting = entry.settings.model_fields.get("weighting")
        if weighting is not None:
            print(f"  {'':14s}   clients weighted by: {weighting.default} (default; `weighting: uniform | examples`)")
        if entry.basis:
            print(f"  {'':14s}   basis: {entry.basis}")
        if entry.official_defaults:
            print(f"  {'':14s}   defaults from the official code: {official_defaults_text(entry)}")
        for line in entry.differs:
            print(f"  {'':14s}   differs: {line}")
    print("  (docs/methods.md: what each method takes from its paper and official code, and what is ours)")
    print("models (or any local directory / hub id available offline):")
    for name, model in BUILTIN_MODELS.items():
        print(f"  {name:14s} {getattr(model, 'description', model)}")
    print(f"  shape:NAME     a published architecture with random weights, NAME one of {', '.join(SHAPES)}")
    print("tasks:")
    for name, task in TASKS.items():
        print(f"  {name:14s} {task.description}")
    print("partitioners:")
    for name in PARTITIONERS:  # Flower Datasets' partitioners (docs/data.md)
        print(f"  {name:14s} {PARTITIONER_DESCRIPTIONS[name]}")
    return 0


def _config_show(args: argparse.Namespace) -> int:
    import yaml

    from zofed.config import load_config

    config = load_config(args.config, args.overrides)
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    for name in config.unused_sections:  # a comment keeps the document valid YAML (and a config)
        text = text.replace(f"\n{name}:\n", f"\n# unused: algorithm is {config.algorithm} (zofed compare reads this section)\n"
                                              f"{name}:\n", 1)
    print(text, end="")
    return 0


def _data(args: argparse.Namespace) -> int:
    from zofed.config import load_config
    from zofed.data import partition_table, plot_partition
    from zofed.runtime.experiment import prepare_data

    if args.plot is not None and Path(args.plot).suffix.lower() not in (".png", ".pdf", ".svg"):
        raise ZofedError(f"--plot {args.plot}: name a .png, .pdf or .svg file")
    config = load_config(args.config, args.overrides)
    data = prepare_data(config)
    splits = data.splits
    print(f"task {config.task}:")
    for name, label in (("train", "train"), ("val", "validation"), ("test", "test")):
        print(f"  {label:10s} {len(getattr(splits, name)):6d}  from {splits.sources.get(name, '?')}")
    print(f"partition {config.partition.method} across {config.clients} clients:")
    for row in partition_table(data.train_categories(), data.client_indices):
        labels = ", ".join(f"{label}={count}" for label, count in sorted(row["labels"].items(), key=str))
        print(f"  client {row['client']:3d}  size {row['size']:6d}  {labels}")
    if args.plot is not None:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot_partition(data.partition, args.plot)
        print(f"plot: {args.plot}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from zofed.runtime.evaluate import evaluate_run, metrics_table

    metrics = None
    if args.metrics is not None:
        metrics = list(dict.fromkeys(name.strip() for name in args.metrics.split(",") if name.strip()))
        if not metrics:
            raise ZofedError("--metrics names no metric; give some of loss, exact_match, rouge_l, gsm8k_answer")
    result = evaluate_run(Path(args.run_dir), args.task, args.data, args.weights, args.examples, args.device, metrics)
    print(json.dumps(result, indent=2) if args.json else metrics_table(result), end="\n" if args.json else "")
    return 0


def _add_export(commands) -> None:
    export = commands.add_parser("export", help="write a run's weights as a PEFT adapter or a merged transformers model")
    export.add_argument("run_dir", help="a run directory, e.g. runs/quickstart")
    export.add_argument("--out", required=True, help="new (or empty) directory to write")
    export.add_argument("--weights", choices=("final", "best"), default="final")
    export.add_argument("--format", choices=("peft", "merged"), default=None,
                        help="peft: adapter for the base model; merged: a standalone model "
                             "(default: peft for LoRA runs, merged for full-parameter runs)")
    export.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    from zofed.runtime.export import export_run

    print(json.dumps(export_run(Path(args.run_dir), Path(args.out), args.weights, args.format), indent=2))
    return 0


def _add_generate(commands) -> None:
    generate = commands.add_parser("generate", help="answer a prompt (or chat, with --chat) with a run's weights")
    generate.add_argument("run_dir", help="a run directory, e.g. runs/quickstart")
    generate.add_argument("prompt", nargs="?", default=None, help="the user message (omit with --chat)")
    generate.add_argument("--chat", action="store_true", help="read one user turn per line from stdin until end of input")
    generate.add_argument("--weights", choices=("final", "best"), default="final")
    generate.add_argument("--max-new-tokens", type=int, default=128, help="longest answer, in tokens")
    generate.set_defaults(handler=_generate)


def _generate(args: argparse.Namespace) -> int:
    from zofed.runtime.generate import chat, reply
    from zofed.runtime.saved_run import load_run_model, open_run

    if args.chat == (args.prompt is not None):
        raise ZofedError("give either a prompt or --chat (turns read from stdin), not both or neither")
    if args.max_new_tokens < 1:
        raise ZofedError(f"--max-new-tokens {args.max_new_tokens} must be at least 1")
    config, weights_file = open_run(Path(args.run_dir), args.weights)
    loaded, _ = load_run_model(config, weights_file)
    if not args.chat:
        print(reply(loaded, config, [{"role": "user", "content": args.prompt}], args.max_new_tokens))
        return 0
    interactive = sys.stdin.isatty()

    def answer(text: str) -> None:
        print(text, flush=True)
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)

    if interactive:
        print("one message per line; end with Ctrl-D\n> ", end="", file=sys.stderr, flush=True)
    chat(loaded, config, sys.stdin, answer, args.max_new_tokens)
    return 0


def _bench_step(args: argparse.Namespace) -> int:
    from zofed.bench import bench_step, step_line
    from zofed.device import describe_device, resolve_device
    from zofed.dtypes import DTYPES
    from zofed.llm.shapes import LADDER, SHAPE_PREFIX, shape_name
    from zofed.machine import describe_machine

    modes, dtypes = args.modes.split(","), args.dtypes.split(",")
    for value, allowed, key in ((modes, {"lora", "full"}, "--modes"), (dtypes, set(DTYPES), "--dtypes")):
        if not set(value) <= allowed:
            raise ZofedError(f"{key} {','.join(value)} has an unknown entry; use {','.join(sorted(allowed))}")
    models = [model.strip() for model in args.model.split(",") if model.strip()]
    models = [name for model in models for name in ([SHAPE_PREFIX + s for s in LADDER] if model == "ladder" else [model])]
    for model in models:
        shape_name(model)  # an unknown shape fails here, not in a worker process
    device = resolve_device(args.device)  # checked here: a missing device is one line, not a worker's traceback
    rows = []
    for model in models:
        for mode in modes:
            for dtype in dtypes:
                # A fresh process per configuration, so one's memory does not inflate the next one's peak.
                with multiprocessing.get_context("spawn").Pool(1) as pool:
                    row = pool.apply(bench_step, (model, mode, dtype, args.batch_size, args.seq_len, args.repeats,
                                                  args.pool_size, str(device), not args.no_reference))
                rows.append(row)
                print(json.dumps(row) if args.json else step_line(row), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        document = {"machine": describe_machine(), "device": describe_device(device), "results": rows}
        Path(args.out).write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
