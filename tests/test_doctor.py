"""polymae doctor: what set-up runs to prove every native library loads."""

import polymae.modalities.registry as registry
from polymae.doctor import main, run_checks
from polymae.modalities.image import ImagePlugin


def test_every_plugin_and_the_core_stack_load_here():
    results = {what: (ok, detail) for what, ok, detail in run_checks()}
    assert {"torch", "timm", "ray", "mlflow", "pyarrow"} <= set(results)
    for name in ("image", "video", "audio", "points", "lidar"):
        assert f"modality {name}" in results
    failed = {what: detail for what, (ok, detail) in results.items() if not ok}
    assert not failed
    assert "torchaudio 2.11.0" in results["modality audio"][1]
    assert "lazrs" in results["modality lidar"][1]


def test_a_broken_native_library_is_named_and_fails(monkeypatch, capsys):
    class Broken(ImagePlugin):
        name = "broken"

        @classmethod
        def check_native(cls) -> str:
            raise OSError("libbroken.so: undefined symbol torch_exception_get_what_without_backtrace")

    monkeypatch.setattr(registry, "available_modalities", lambda: ["broken", "image"])
    real = registry.get_plugin_class
    monkeypatch.setattr(registry, "get_plugin_class", lambda name: Broken if name == "broken" else real(name))
    assert main() == 1
    out = capsys.readouterr()
    assert "FAIL modality broken" in out.out and "undefined symbol" in out.out
    assert "ok   modality image" in out.out
    assert "1 failed (modality broken)" in out.err
