"""PolyMAE modality plugin for regularly sampled multichannel time series (CSV), a worked example
of a third-party plugin: it registers through the ``polymae.modalities`` entry point in its
pyproject.toml."""

from polymae_timeseries.plugin import TimeseriesConfig, TimeseriesPlugin

__all__ = ["TimeseriesConfig", "TimeseriesPlugin"]
