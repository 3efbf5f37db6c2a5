"""The training progress line on the driver, fed by the step metrics rank 0 already logs to
MLflow: while ``trainer.fit()`` runs, a thread reads them back every few seconds.

Why MLflow and not a Ray queue: the metrics are there anyway, with their step, from whichever
worker process and node rank 0 runs on; nothing new has to live through worker restarts.
"""

from __future__ import annotations

import threading

from mlflow.tracking import MlflowClient

from polymae.orchestration.console import Progress

SHOWN = {"train/loss": "loss {:.4f}", "train/samples_per_s": "{:.1f} samples/s", "train/data_wait": "data-wait {:.0%}"}


class TrainingProgress:
    """``with TrainingProgress(client, run_id, steps): trainer.fit()`` — one line: step,
    loss, samples/s, the fraction of time the loop waited for data, ETA."""

    def __init__(self, client: MlflowClient, run_id: str, steps: int, start_step: int = 0,
                 every_s: float = 2.0) -> None:
        self.client, self.run_id, self.every_s = client, run_id, every_s
        self.start_step = start_step
        self.progress = Progress("train: step", steps)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="polymae-train-progress", daemon=True)

    def __enter__(self) -> TrainingProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()
        self.progress.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.poll()

    def poll(self) -> None:
        """Read the newest logged step's metrics; show them if they are new."""
        try:
            latest = {}
            for key in SHOWN:
                history = self.client.get_metric_history(self.run_id, key)
                if history:
                    latest[key] = max(history, key=lambda m: m.step)
        except Exception:  # noqa: BLE001 — the line is a view; training reports its own failures
            return
        loss = latest.get("train/loss")
        if loss is None or loss.step <= max(self.progress.done, self.start_step):
            return
        detail = "  ".join(fmt.format(latest[k].value) for k, fmt in SHOWN.items()
                           if k in latest and latest[k].step == loss.step)
        self.progress.update(loss.step, detail)
