"""kNN monitor: a labelled memory bank and a balanced test subset of queries.

The stage builds the bank (``stages/loaders.knn_bank``): by default the manifest's training images
with their observed, possibly noisy, labels — the labels a practitioner has — capped per observed
class so that head classes do not out-vote tail ones; or, as an oracle, a class-balanced sample of
the whole train split with clean labels (``pretrain.knn.bank: clean_train``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor,
                num_classes: int, k: int = 20, temperature: float = 0.07,
                chunk: int = 1024, max_cells: int = 1 << 25) -> torch.Tensor:
    """Weighted kNN (cosine similarity, weights exp(s/T)); returns predicted labels. Queries go
    in chunks of at most ``chunk`` rows and ``max_cells`` similarities (128 MB of fp32), so the
    working memory stays flat however large the bank."""
    bank = F.normalize(bank, dim=1)
    k = min(k, len(bank))
    chunk = max(1, min(chunk, max_cells // max(1, len(bank))))
    preds = []
    for q in F.normalize(queries, dim=1).split(chunk):
        sim, idx = (q @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(q), num_classes, dtype=sim.dtype)
        votes.scatter_add_(1, bank_labels[idx], (sim / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds)


class KnnMonitor:
    """Holds the bank and query loaders; ``__call__(encoder)`` returns the kNN accuracy."""

    def __init__(self, bank_loader, query_loader, num_classes: int, device, k: int,
                 temperature: float, progress: bool = False):
        self.bank_loader, self.query_loader = bank_loader, query_loader
        self.num_classes, self.device, self.k, self.t = num_classes, device, k, temperature
        self.progress = progress

    def __call__(self, encoder) -> float:
        from ltscale.engine.features import encode

        bank, bank_y = encode(encoder, self.bank_loader, self.device, desc="knn bank",
                              progress=self.progress)
        q, q_y = encode(encoder, self.query_loader, self.device, desc="knn query",
                        progress=self.progress)
        pred = knn_predict(bank, bank_y, q, self.num_classes, self.k, self.t)
        return float((pred == q_y).float().mean())
