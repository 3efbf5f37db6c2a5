"""What a probe stage (``kind: probe``, its ``options``) and ``polymae probe`` take."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FEATURES = ("cls", "mean")  # the encoder's cls token, or the mean of its encoded tokens


class ProbeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="labelled set: a folder with a sub-folder per class, or a CSV / Parquet "
                                  "table with columns path, label and optionally split (train | test)")
    stream: str | None = Field(None, description="which of the model's streams the files are (default: its first)")
    feature: Literal["cls", "mean"] = Field("cls", description="cls token, or mean of the encoded tokens")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="per class, when the table has no split column")
    k: int = Field(20, ge=1, description="kNN neighbours (solo-learn: 20)")
    tau: float = Field(0.07, gt=0, description="kNN vote temperature: weight exp(cos/τ) (solo-learn: 0.07)")
    linear_epochs: int = Field(90, ge=1, description="linear probe epochs (MAE: 90)")
    linear_lr: float = Field(0.1, gt=0, description="linear probe SGD learning rate (cosine decay)")
    linear_batch_size: int = Field(256, ge=2)
    baseline: bool = Field(True, description="also probe a random-init encoder of the same architecture")
    output: str | None = Field(None, description="folder of features, split and report (default: <run>/<stage>)")
