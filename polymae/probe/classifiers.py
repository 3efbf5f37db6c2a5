"""The two probes on frozen features: a weighted kNN vote and a linear head.

kNN follows solo-learn's ``WeightedKNNClassifier`` (cosine similarity, the k nearest training
features vote with weight exp(sim/τ); k = 20, τ = 0.07). The linear probe is MAE's
(``main_linprobe.py``): BatchNorm without affine parameters, then a linear layer, trained on the
frozen features (SGD with momentum on a cosine schedule here, where MAE uses LARS; no weight decay).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def knn_predict(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray, n_classes: int,
                k: int = 20, tau: float = 0.07) -> np.ndarray:
    """Labels (M,) of test features (M, W) from training features (N, W) with labels (N,) in
    [0, n_classes): each test feature's k most cosine-similar training features vote for their
    labels with weight exp(sim/τ); the largest total wins (ties: the lower label)."""
    train = F.normalize(torch.as_tensor(train_feats, dtype=torch.float64), dim=1)
    test = F.normalize(torch.as_tensor(test_feats, dtype=torch.float64), dim=1)
    labels = torch.as_tensor(train_labels, dtype=torch.long)
    sim, idx = (test @ train.T).topk(min(k, len(train)), dim=1)  # (M, k)
    votes = torch.zeros(len(test), n_classes, dtype=torch.float64)
    votes.scatter_add_(1, labels[idx], (sim / tau).exp())
    return votes.argmax(dim=1).numpy()


def linear_probe(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray, n_classes: int,
                 epochs: int = 90, batch_size: int = 256, lr: float = 0.1, seed: int = 0) -> np.ndarray:
    """Labels (M,) of test features (M, W) from BatchNorm1d(affine=False) + Linear trained on the
    frozen training features (N, W) with labels (N,); seeded (init and batch order), so the
    same features give the same answer."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(train_feats, dtype=torch.float32)
    y = torch.as_tensor(train_labels, dtype=torch.long)
    linear = torch.nn.Linear(x.shape[1], n_classes)
    with torch.no_grad():  # MAE: trunc_normal_(std=0.01), zero bias
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=gen).clamp(-2, 2) * 0.01)
        linear.bias.zero_()
    head = torch.nn.Sequential(torch.nn.BatchNorm1d(x.shape[1], affine=False, eps=1e-6), linear)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9)
    steps_per_epoch = max(1, math.ceil(len(x) / batch_size))
    total = epochs * steps_per_epoch
    step = 0
    head.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(steps_per_epoch):
            batch = order[i * batch_size:(i + 1) * batch_size]
            if len(batch) < 2:  # BatchNorm needs two samples to have a variance
                continue
            for group in opt.param_groups:  # cosine decay to 0
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(head(x[batch]), y[batch])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"linear probe: non-finite loss {loss.item()} at step {step}")
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    head.eval()
    with torch.no_grad():
        return head(torch.as_tensor(test_feats, dtype=torch.float32)).argmax(dim=1).numpy()


def top1(pred: np.ndarray, labels: np.ndarray) -> float:
    """Fraction (0–1) of predictions equal to the labels."""
    return float(np.mean(np.asarray(pred) == np.asarray(labels))) if len(labels) else float("nan")


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts: row = true label, column = predicted label."""
    out = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(out, (np.asarray(labels), np.asarray(pred)), 1)
    return out
