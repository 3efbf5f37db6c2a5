"""``polymae``: run, plan and submit pipelines; follow cluster jobs; register and use models."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from polymae.pipelines.spec import PipelineSpec, SpecError, load_spec
from polymae.pipelines.spec_diff import ForkError, SpecChangedError


def _cmd_modalities(args: argparse.Namespace) -> int:
    from polymae.modalities.registry import available_modalities, make_plugin
    from polymae.tokenizer.masking import available_strategies
    from polymae.tokenizer.policies import available_policies

    info = [make_plugin(name).describe() for name in available_modalities()]
    if args.json:
        print(json.dumps({"modalities": info, "mask_strategies": available_strategies(),
                          "mask_policies": available_policies()}, indent=2))
        return 0
    for plugin in info:
        tokens = plugin["tokens"]
        print(f"{plugin['name']}  ({plugin['reference']})  tokens N={tokens['N']} D={tokens['D']} "
              f"C={tokens['C']}  extensions: {' '.join(plugin['extensions'])}")
        mask = plugin["default_mask"]
        print(f"    axes: {', '.join(plugin['axes'])}")
        print(f"    default mask: {', '.join(f'{k}={v}' for k, v in mask.items())}")
        for key, value in plugin["config"].items():
            print(f"    {key} = {value}")
    print(f"mask strategies: {', '.join(available_strategies())}")
    print(f"mask policies (tokenizer.policy): {', '.join(available_policies())}")
    return 0


def plugin_settings(spec: PipelineSpec) -> list[str]:
    """Per stream, the plugin config it runs with (the spec's fields over the plugin's
    defaults), as YAML comment lines: the output of ``validate`` stays a loadable spec."""
    from polymae.modalities.registry import get_plugin_class

    lines = ["# plugin settings that apply (the spec's fields over each plugin's defaults):"]
    for source in spec.sources:
        resolved = get_plugin_class(source.modality).Config(**source.config).model_dump(mode="json")
        lines.append(f"#   {source.name} ({source.modality}):")
        lines += [f"#     {key}: {value}" + ("" if key in source.config else "   (default)")
                  for key, value in resolved.items()]
    return lines


def _cmd_validate(args: argparse.Namespace) -> int:
    from polymae.pipelines.spec import spec_to_yaml

    spec = load_spec(args.spec, args.set)
    print(spec_to_yaml(spec), end="")
    print("\n".join(plugin_settings(spec)))
    return 0


def _spec(args: argparse.Namespace) -> PipelineSpec:
    overrides = list(args.set)
    if getattr(args, "address", None) and args.command == "run":
        overrides.append(f"runtime.address={args.address}")
    return load_spec(args.spec, overrides)  # fails here, before anything starts, on a bad spec


def _cmd_run(args: argparse.Namespace) -> int:
    spec = _spec(args)
    from polymae.orchestration.console import CONSOLE, failure_reason
    from polymae.orchestration.locations import enter_outputs_dir
    from polymae.orchestration.run import StageFailed, run_pipeline, shutdown
    from polymae.orchestration.runtime import quiet_ray

    outputs = enter_outputs_dir(spec)  # a Ray Job's working directory may vanish mid-run: work in a stable one
    if not args.verbose:  # Ray's, Ray Data's and MLflow's output into the run folder's log
        quiet_ray()
        CONSOLE.capture(outputs / f".polymae-{os.getpid()}.log")  # until the run has its folder
    try:
        result = run_pipeline(spec, run_name=args.run_name, resume_run_id=args.resume, use_cache=not args.no_cache,
                              fork=args.fork)
    except (SpecChangedError, ForkError):  # refused before anything started: main() says why
        raise
    except Exception as err:  # one clear message; the whole traceback goes to the log
        traceback.print_exc()
        line = str(err) if isinstance(err, StageFailed) else f"polymae run failed: {failure_reason(err)}"
        log = f"full log: {CONSOLE.log_path}" if CONSOLE.log_path else "the traceback is above"
        CONSOLE.say(f"polymae: {line}\n    {log}")
        return 1
    finally:
        shutdown()
        CONSOLE.release()
    uri = result.tracking_uri
    ui = f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite") else uri
    print(f"[polymae] MLflow run {result.run_id} in experiment {spec.tracking.experiment!r}; "
          f"open the UI with:\n    {ui}")
    if CONSOLE.log_path:
        print(f"[polymae] Ray's and MLflow's output: {CONSOLE.log_path}")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from polymae.orchestration.run import plan

    stages = plan(_spec(args), use_cache=not args.no_cache)
    print(f"{'stage':<16} {'kind':<9} {'needs':<20} {'fingerprint':<14} action")
    for s in stages:
        action = f"reuse {s.reuse[1]} (run {s.reuse[0]})" if s.reuse else "run"
        print(f"{s.name:<16} {s.kind:<9} {','.join(s.needs) or '-':<20} {s.fingerprint[:12]:<14} {action}")
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    from polymae.orchestration import jobs
    from polymae.orchestration.locations import resolve_locations

    spec = _spec(args)
    changed = resolve_locations(spec)  # the job's own working directory is temporary
    if changed:
        print("[polymae] resolved on this machine: " + "; ".join(changed) + ". A cluster of several "
              "machines needs shared storage for outputs.dir and an MLflow server (docs/cluster.md)")
    job_id = jobs.submit(spec, args.address, args.run_name, args.resume, args.fork)
    print(f"[polymae] submitted job {job_id}; follow it with: polymae logs {job_id} --follow")
    if not args.wait:
        return 0
    status = jobs.wait(job_id, args.address)
    print(f"[polymae] job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def _cmd_status(args: argparse.Namespace) -> int:
    from polymae.orchestration import jobs

    info = jobs.client(args.address).get_job_info(args.job)
    print(f"{args.job}: {info.status}" + (f" ({info.message})" if info.message else ""))
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    import asyncio

    from polymae.orchestration import jobs

    client = jobs.client(args.address)
    if not args.follow:
        print(client.get_job_logs(args.job), end="")
        return 0

    async def follow() -> None:
        async for lines in client.tail_job_logs(args.job):
            print(lines, end="", flush=True)

    asyncio.run(follow())
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    from polymae.orchestration import jobs

    stopped = jobs.client(args.address).stop_job(args.job)
    print(f"{args.job}: {'stop requested' if stopped else 'not running'}")
    return 0


def _cmd_register(args: argparse.Namespace) -> int:
    from mlflow.tracking import MlflowClient

    from polymae.orchestration.locations import resolve_tracking_uri
    from polymae.orchestration.tracking import filter_value, set_alias

    uri = resolve_tracking_uri(args.tracking_uri)
    versions = MlflowClient(uri).search_model_versions(f"run_id = {filter_value(args.run)}")
    if not versions:
        print(f"polymae: run {args.run} registered no model version", file=sys.stderr)
        return 2
    newest = max(versions, key=lambda v: int(v.version))
    set_alias(uri, newest.name, newest.version, args.alias)
    print(f"[polymae] models:/{newest.name}@{args.alias} → version {newest.version} (run {args.run})")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    import ray

    from polymae.orchestration.embed import embed_files
    from polymae.orchestration.inference import resolve_checkpoint
    from polymae.orchestration.run import shutdown

    checkpoint = resolve_checkpoint(args.model, args.tracking_uri)
    started = not ray.is_initialized()  # a caller's Ray (tests, notebooks) is left running
    if started:
        ray.init(address=args.address or "local", include_dashboard=False)
    try:
        counts = embed_files(checkpoint, args.data, args.output, stream=args.stream)
    finally:
        if started:
            shutdown()
    print(f"[polymae] {counts['files']} files: {counts['embedded']} embedded ({counts['rows']} rows) "
          f"+ {counts['quarantined']} quarantined → {args.output}")
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from pathlib import Path

    import ray
    from mlflow.tracking import MlflowClient
    from pydantic import ValidationError

    from polymae.orchestration.inference import resolve_checkpoint
    from polymae.orchestration.run import shutdown
    from polymae.orchestration.tracking import experiment_id, resolve_tracking_uri
    from polymae.probe.options import ProbeOptions
    from polymae.probe.report import log_probe, summary
    from polymae.probe.run import run_probe

    fields = {k: getattr(args, k) for k in ("stream", "feature", "k", "tau", "test_fraction") if getattr(args, k)}
    try:  # a bad option fails before the model loads
        options = ProbeOptions(data=str(Path(args.data).resolve()), baseline=not args.no_baseline, **fields)
    except ValidationError as err:
        lines = [f"--{'.'.join(map(str, e['loc'])).replace('_', '-')} = {e.get('input')!r}: {e['msg']}"
                 for e in err.errors()]
        raise SpecError(lines) from None
    uri = resolve_tracking_uri(args.tracking_uri)
    checkpoint = resolve_checkpoint(args.model, uri)
    started = not ray.is_initialized()  # a caller's Ray (tests, notebooks) is left running
    if started:
        ray.init(address=args.address or "local", include_dashboard=False)
    try:
        result = run_probe(checkpoint, options, args.output, args.cache)
    finally:
        if started:
            shutdown()
    client = MlflowClient(uri)
    run = client.create_run(experiment_id(client, args.experiment, uri), run_name=f"probe-{Path(args.data).name}",
                            tags={"polymae.probe.model": args.model})
    log_probe(client, run.info.run_id, result, options, Path(args.output))
    client.set_terminated(run.info.run_id)
    print(summary(result))
    print(f"[polymae] MLflow {uri} run {run.info.run_id}; outputs in {args.output}")
    return 0


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from polymae.orchestration.checkpoint import load_model
    from polymae.orchestration.inference import resolve_checkpoint
    from polymae.orchestration.reconstruct import parse_files, reconstruct_files

    files = parse_files(args.files)  # a malformed --files fails before the model loads
    model, spec = load_model(resolve_checkpoint(args.model, args.tracking_uri))
    written = reconstruct_files(model, spec, args.inputs, args.targets, files, args.out)
    for stream, path in written.items():
        print(f"[polymae] {stream} from {', '.join(args.inputs)} → {path}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from polymae.orchestration.export import export_model

    for path in export_model(args.model, args.format, args.out, args.stream, args.tracking_uri):
        print(f"[polymae] wrote {path}")
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from polymae.doctor import main as doctor

    return doctor()


def _spec_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec field, e.g. --set train.steps=50 (repeatable)")


def _fork_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fork", nargs="?", const="", metavar="NEW_NAME",
                        help="start a new run (NEW_NAME, default <run-name>-fork-N) from the last checkpoint "
                             "of the run --run-name or --resume names, under this spec")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polymae", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a pipeline spec end to end")
    _spec_args(run)
    run.add_argument("--address", help="Ray address of an existing cluster (default: embedded Ray)")
    run.add_argument("--run-name", help="MLflow/output run name; the same name again resumes (same spec only)")
    run.add_argument("--resume", metavar="RUN_ID", help="continue this MLflow run from its last checkpoint")
    _fork_arg(run)
    run.add_argument("--no-cache", action="store_true", help="run every stage, reusing nothing")
    run.add_argument("--verbose", action="store_true",
                     help="stream Ray's and MLflow's output live instead of into <run folder>/logs/run.log")
    run.set_defaults(func=_cmd_run)

    plan = sub.add_parser("plan", help="print the stage DAG and which stages would run or be reused")
    _spec_args(plan)
    plan.add_argument("--no-cache", action="store_true")
    plan.set_defaults(func=_cmd_plan)

    submit = sub.add_parser("submit", help="run a spec on a Ray cluster as a Ray Job")
    _spec_args(submit)
    submit.add_argument("--address", help="the cluster's dashboard, e.g. http://127.0.0.1:8265 (default RAY_ADDRESS)")
    submit.add_argument("--run-name", help="MLflow run name; the same name again resumes (same spec only)")
    submit.add_argument("--resume", metavar="RUN_ID", help="continue this MLflow run")
    _fork_arg(submit)
    submit.add_argument("--wait", action="store_true", help="wait for the job; exit 1 unless it succeeds")
    submit.set_defaults(func=_cmd_submit)

    for name, func, text in (("status", _cmd_status, "a job's status"), ("logs", _cmd_logs, "a job's logs"),
                             ("stop", _cmd_stop, "stop a job")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("job", help="the submission id `polymae submit` printed")
        cmd.add_argument("--address", help="the cluster's dashboard address (default RAY_ADDRESS)")
        if name == "logs":
            cmd.add_argument("--follow", action="store_true", help="stream until the job ends")
        cmd.set_defaults(func=func)

    register = sub.add_parser("register", help="point a registry alias at the model version a run registered")
    register.add_argument("run", help="MLflow run id")
    register.add_argument("--alias", required=True, help="e.g. champion")
    register.add_argument("--tracking-uri", help="default MLFLOW_TRACKING_URI, then sqlite:///mlflow.db")
    register.set_defaults(func=_cmd_register)

    embed = sub.add_parser("embed", help="encoder embeddings of files → Parquet (Ray Data)")
    embed.add_argument("data", nargs="+", help="files or folders of the model's modality")
    embed.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or a checkpoint folder")
    embed.add_argument("--output", required=True, help="folder for embeddings/ and quarantine.parquet")
    embed.add_argument("--stream", help="which of the model's streams the files are (default: its first)")
    embed.add_argument("--tracking-uri", help="default MLFLOW_TRACKING_URI, then sqlite:///mlflow.db")
    embed.add_argument("--address", help="Ray address (default: an embedded Ray)")
    embed.set_defaults(func=_cmd_embed)

    probe = sub.add_parser("probe", help="kNN and linear probes of a model's encoder on labelled data, "
                                         "beside a random-init encoder")
    probe.add_argument("data", help="a folder of class folders, or a CSV / Parquet table: path, label[, split]")
    probe.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or a checkpoint folder")
    probe.add_argument("--output", required=True, help="folder for probe.json, split.csv, quarantine.parquet, PNGs")
    probe.add_argument("--stream", help="which of the model's streams the files are (default: its first)")
    probe.add_argument("--feature", help="cls (default) or mean (of the encoded tokens)")
    probe.add_argument("--k", type=int, help="kNN neighbours (default 20)")
    probe.add_argument("--tau", type=float, help="kNN temperature (default 0.07)")
    probe.add_argument("--test-fraction", type=float, help="per class, without a split column (default 0.2)")
    probe.add_argument("--no-baseline", action="store_true", help="skip the random-init encoder")
    probe.add_argument("--cache", default="runs/stages", help="where random-init baselines are kept (reused)")
    probe.add_argument("--experiment", default="polymae-probe", help="MLflow experiment of the probe's run")
    probe.add_argument("--tracking-uri", help="default MLFLOW_TRACKING_URI, then sqlite:///mlflow.db")
    probe.add_argument("--address", help="Ray address (default: an embedded Ray)")
    probe.set_defaults(func=_cmd_probe)

    recon = sub.add_parser("reconstruct", help="encode some streams' files, predict others → renders")
    recon.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or a checkpoint folder")
    recon.add_argument("--inputs", nargs="+", required=True, metavar="STREAM", help="streams the encoder sees")
    recon.add_argument("--targets", nargs="+", required=True, metavar="STREAM", help="streams to predict")
    recon.add_argument("--files", nargs="+", required=True, metavar="STREAM=PATH",
                       help="one file per input and target stream (a target's: where to predict, the original)")
    recon.add_argument("--out", required=True, help="folder for <stream>.png (or .npy without a render)")
    recon.add_argument("--tracking-uri", help="default MLFLOW_TRACKING_URI, then sqlite:///mlflow.db")
    recon.set_defaults(func=_cmd_reconstruct)

    export = sub.add_parser("export", help="write a model's encoder for fine-tuning elsewhere (timm or torch)")
    export.add_argument("--model", required=True,
                        help="models:/NAME@ALIAS, models:/NAME/VERSION or a checkpoint folder")
    export.add_argument("--format", required=True, choices=("timm", "torch"),
                        help="timm: an image stream as a timm VisionTransformer state dict (+ FILE.json); "
                             "torch: any stream's encoder, a folder with encoder.pt + encoder.json")
    export.add_argument("--out", required=True, help="timm: the state dict file; torch: a folder")
    export.add_argument("--stream", help="which of the model's streams (default: its first)")
    export.add_argument("--tracking-uri", help="default MLFLOW_TRACKING_URI, then sqlite:///mlflow.db")
    export.set_defaults(func=_cmd_export)

    validate = sub.add_parser("validate", help="check a spec and print it resolved")
    _spec_args(validate)
    validate.set_defaults(func=_cmd_validate)

    mods = sub.add_parser("modalities", help="list modality plugins with their defaults")
    mods.add_argument("--json", action="store_true")
    mods.set_defaults(func=_cmd_modalities)

    doctor = sub.add_parser("doctor", help="check that torch, Ray, MLflow and every plugin's native libraries load")
    doctor.set_defaults(func=_cmd_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (SpecError, SpecChangedError, ForkError) as err:
        print(f"polymae: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        if args.command not in ("reconstruct", "probe", "export"):
            raise
        print(f"polymae {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
