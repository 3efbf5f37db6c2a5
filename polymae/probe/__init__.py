"""Probes of a pre-trained encoder on labelled data: kNN (solo-learn), linear (MAE), and the
same on a random-init encoder of the same architecture (the baseline)."""

from polymae.probe.classifiers import confusion_matrix, knn_predict, linear_probe, top1

__all__ = ["confusion_matrix", "knn_predict", "linear_probe", "top1"]
