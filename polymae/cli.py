"""``polymae``: run pipelines, validate specs, list plugins."""

from __future__ import annotations

import argparse
import json
import sys

from polymae.pipelines.spec import SpecError, load_spec


def _cmd_modalities(args: argparse.Namespace) -> int:
    from polymae.modalities.registry import available_modalities, make_plugin
    from polymae.tokenizer.masking import available_strategies

    info = [make_plugin(name).describe() for name in available_modalities()]
    if args.json:
        print(json.dumps({"modalities": info, "mask_strategies": available_strategies()}, indent=2))
        return 0
    for plugin in info:
        tokens = plugin["tokens"]
        print(f"{plugin['name']}  ({plugin['reference']})  tokens N={tokens['N']} D={tokens['D']} "
              f"C={tokens['C']}  extensions: {' '.join(plugin['extensions'])}")
        mask = plugin["default_mask"]
        print(f"    default mask: {', '.join(f'{k}={v}' for k, v in mask.items())}")
        for key, value in plugin["config"].items():
            print(f"    {key} = {value}")
    print(f"mask strategies: {', '.join(available_strategies())}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from polymae.pipelines.spec import spec_to_yaml

    spec = load_spec(args.spec, args.set)
    print(spec_to_yaml(spec), end="")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    overrides = list(args.set)
    if args.address:
        overrides.append(f"runtime.address={args.address}")
    spec = load_spec(args.spec, overrides)  # fails here, before Ray starts, on a bad spec

    from polymae.orchestration.run import run_pipeline, shutdown

    try:
        result = run_pipeline(spec, run_name=args.run_name)
    finally:
        shutdown()
    uri = result.tracking_uri
    ui = f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite") else uri
    print(f"[polymae] MLflow run {result.run_id} in experiment {spec.tracking.experiment!r}; "
          f"open the UI with:\n    {ui}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polymae", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a pipeline spec end to end")
    run.add_argument("spec")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a spec field, e.g. --set train.steps=50 (repeatable)")
    run.add_argument("--address", help="Ray address of an existing cluster (default: embedded Ray)")
    run.add_argument("--run-name", help="MLflow/output run name; the same name again resumes")
    run.set_defaults(func=_cmd_run)

    validate = sub.add_parser("validate", help="check a spec and print it resolved")
    validate.add_argument("spec")
    validate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    validate.set_defaults(func=_cmd_validate)

    mods = sub.add_parser("modalities", help="list modality plugins with their defaults")
    mods.add_argument("--json", action="store_true")
    mods.set_defaults(func=_cmd_modalities)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SpecError as err:
        print(f"polymae: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
