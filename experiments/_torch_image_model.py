"""Post 000's image classifier in PyTorch, as the post writes it, timed per training epoch (a benchmark worker).

Not an experiment and not part of numpy_moe: ``experiments/_bench_images.py`` runs this file in a
subprocess with a Python that has torch, so the project never needs torch. It imports only torch, numpy
and the standard library.

The classes follow the post line for line (``SparseMoE``: every expert on every sample, stacked,
``gather`` of the top-k outputs weighted by the un-renormalised softmax probabilities, the hard selection
counts in a buffer and ``0.01 * std`` of their shares as the balance loss; ``MoEImageClassifier``:
conv 3x3 - ReLU - maxpool 2 - conv 3x3 - ReLU - maxpool 2 - flatten - SparseMoE - linear). What the post
hard-codes for CIFAR-10 (3 input channels, ``input_dim = 64 * 8 * 8``, ``hidden_dim = 512``) is a
constructor argument here, so the same code runs on the 8x8 digits (1 channel, 64 * 2 * 2 = 256 features).
The training step is the post's: ``zero_grad``, forward, ``CrossEntropyLoss`` plus the balance loss,
``backward``, ``Adam(lr=1e-3).step()``. The post's ``DataLoader(shuffle=True)`` becomes a fresh
permutation per epoch indexing tensors already in memory, the cheapest way for torch to batch data held
in memory (the post's loader collates sample by sample, which would only slow torch down).

Protocol (JSON lines): started as ``python _torch_image_model.py DATA.npz CONFIG_JSON``, it loads
``X`` (N, C, S, S) float32 and ``y`` (N,) int64 from the npz, builds the model with
``torch.manual_seed(seed)`` and ``torch.set_num_threads(threads)``, prints ``{"ready": true, ...}`` and
then answers each line ``{"epochs": n}`` read from stdin by training n epochs and printing
``{"times": [seconds per epoch], "cpu": [CPU seconds of the process per epoch], "loss": last epoch's
mean loss}``. An empty line or end of input stops it.
"""
import json
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class SparseMoE(nn.Module):
    """The post's MoE layer; its module-level hyperparameters are arguments here."""

    def __init__(self, input_dim, hidden_dim, num_experts=4, top_k=2, balance_loss_weight=0.01):
        super().__init__()
        self.num_experts, self.top_k, self.hidden_dim = num_experts, top_k, hidden_dim
        self.experts = nn.ModuleList([
            nn.Sequential(
                nn.Linear(input_dim, hidden_dim),
                nn.ReLU(),
                nn.Linear(hidden_dim, hidden_dim)
            ) for _ in range(num_experts)])
        self.gate = nn.Sequential(
            nn.Linear(input_dim, num_experts),
            nn.Softmax(dim=1)
        )
        self.balance_loss_weight = balance_loss_weight
        self.register_buffer('expert_counts', torch.zeros(num_experts))

    def forward(self, x):
        gate_scores = self.gate(x)  # [B, num_experts]
        topk_scores, topk_indices = torch.topk(gate_scores, self.top_k, dim=1)
        mask = F.one_hot(topk_indices, self.num_experts).float().sum(dim=1)
        expert_outputs = torch.stack([expert(x) for expert in self.experts], dim=1)
        selected_experts = expert_outputs.gather(
            1, topk_indices.unsqueeze(-1).expand(-1, -1, self.hidden_dim))  # [B, top_k, H]
        weighted_outputs = (selected_experts * topk_scores.unsqueeze(-1)).sum(dim=1)
        self.expert_counts += mask.sum(dim=0)
        return weighted_outputs

    def balance_loss(self):
        expert_probs = self.expert_counts / self.expert_counts.sum()
        balance_loss = torch.std(expert_probs) * self.balance_loss_weight
        self.expert_counts.zero_()
        return balance_loss


class MoEImageClassifier(nn.Module):
    """The post's classifier; in_channels, image_size and hidden_dim are arguments here."""

    def __init__(self, in_channels=3, image_size=32, hidden_dim=512, num_classes=10, num_experts=4, top_k=2):
        super().__init__()
        self.feature_extractor = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2)
        )
        self.moe_layer = SparseMoE(64 * (image_size // 4) ** 2, hidden_dim, num_experts, top_k)
        self.classifier = nn.Linear(hidden_dim, num_classes)

    def forward(self, x):
        x = self.feature_extractor(x)
        x = x.view(x.size(0), -1)
        x = self.moe_layer(x)
        return self.classifier(x)


def train_epoch(model, criterion, optimizer, X, y, batch_size, generator):
    """One epoch of the post's training loop; returns the mean total loss over the batches."""
    order = torch.randperm(len(y), generator=generator)
    total, n_batches = 0.0, 0
    for start in range(0, len(y), batch_size):
        idx = order[start:start + batch_size]
        images, labels = X[idx], y[idx]
        optimizer.zero_grad()
        outputs = model(images)
        main_loss = criterion(outputs, labels)
        balance_loss = model.moe_layer.balance_loss()
        total_loss = main_loss + balance_loss
        total_loss.backward()
        optimizer.step()
        total += total_loss.item()
        n_batches += 1
    return total / n_batches


def main(argv):
    data_path, config = argv[0], json.loads(argv[1])
    torch.set_num_threads(int(config["threads"]))
    torch.manual_seed(int(config.get("seed", 0)))
    with np.load(data_path) as data:
        X = torch.from_numpy(np.ascontiguousarray(data["X"], dtype=np.float32))
        y = torch.from_numpy(np.ascontiguousarray(data["y"], dtype=np.int64))
    model = MoEImageClassifier(in_channels=X.shape[1], image_size=X.shape[2], hidden_dim=int(config["hidden"]),
                               num_classes=int(config.get("classes", 10)),
                               num_experts=int(config.get("experts", 4)), top_k=int(config.get("top_k", 2)))
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=float(config.get("lr", 1e-3)))
    generator = torch.Generator().manual_seed(int(config.get("seed", 0)))
    batch_size = int(config["batch_size"])
    print(json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        request = json.loads(line)
        times, cpu, loss = [], [], None
        for _ in range(int(request["epochs"])):
            t0, c0 = time.perf_counter(), time.process_time()
            loss = train_epoch(model, criterion, optimizer, X, y, batch_size, generator)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        print(json.dumps({"times": times, "cpu": cpu, "loss": loss}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
