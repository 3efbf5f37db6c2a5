"""``polymae doctor``: does this environment load everything a run needs?

Set-up runs it after building the venv, so a broken native library (a torchaudio build that
does not match torch, a missing libusb for open3d) fails there with the package's name, not
at test collection or halfway through a run. Each installed modality plugin is imported and
its :meth:`~polymae.modalities.base.ModalityPlugin.check_native` exercised.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def _core_checks() -> dict[str, Callable[[], str]]:
    def torch_() -> str:
        import torch

        x = torch.ones(4, 4)
        assert float((x @ x).sum()) == 64.0
        return f"torch {torch.__version__}, CUDA {'yes' if torch.cuda.is_available() else 'no'}"

    def timm_() -> str:
        import timm
        import timm.layers

        return f"timm {timm.__version__} (fused attention {'on' if timm.layers.use_fused_attn() else 'off'})"

    def module(name: str) -> Callable[[], str]:
        return lambda: f"{name} {importlib.import_module(name).__version__}"

    return {"torch": torch_, "timm": timm_, "ray": module("ray"), "mlflow": module("mlflow"),
            "pyarrow": module("pyarrow")}


def run_checks() -> list[tuple[str, bool, str]]:
    """(what, ok, versions or the error) for the core stack and every installed plugin."""
    from polymae.modalities.registry import available_modalities, get_plugin_class

    checks = _core_checks()
    for name in available_modalities():
        checks[f"modality {name}"] = lambda name=name: get_plugin_class(name).check_native() or "loaded"
    results = []
    for what, check in checks.items():
        try:
            results.append((what, True, check()))
        except Exception as err:  # any failure to load is the finding; report it and go on
            first = (str(err).strip().splitlines() or [""])[0][:300]
            results.append((what, False, f"{type(err).__name__}: {first}"))
    return results


def main() -> int:
    results = run_checks()
    width = max(len(what) for what, _, _ in results)
    for what, ok, detail in results:
        print(f"{'ok  ' if ok else 'FAIL'} {what:<{width}}  {detail}")
    failed = [what for what, ok, _ in results if not ok]
    if failed:
        print(f"polymae doctor: {len(failed)} failed ({', '.join(failed)}); the environment does not match "
              "uv.lock or a system library is missing: run `make setup` (README, Set-up)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
