"""PolyMAE: masked-autoencoder pre-training on many sensor modalities with one pipeline."""

__version__ = "0.1.0"
