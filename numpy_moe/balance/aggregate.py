"""How frameworks feed balance losses: token masks and several layers (MATH.md §10.6).

- :func:`select_samples` keeps only the samples that count (padding excluded from every statistic) and
  :func:`expand_grad` puts the gradient back with zeros at the padding;
- :class:`MultiLayer` averages the per-layer losses or concatenates the layers' routings as if they were
  one layer (Mixtral's and Qwen2-MoE's ``load_balancing_loss_func``).
"""
from ..backend import get_array_module, to_numpy
from .losses import BalanceLoss


def select_samples(routing, mask):
    """The routing of the samples where ``mask`` is True, as if the others were not in the batch.

    Parameters
    ----------
    routing : a Routing of N samples. mask : (N,) bool, True for the samples that count (not padding).

    Returns
    -------
    sub : the Routing of the n = mask.sum() counted samples, numbered 0..n-1 in their order; its
        ``seq_lengths`` count the counted samples of each sequence (sequences left empty are dropped).
    index : (m,) the assignments of ``routing`` that ``sub`` keeps, for :func:`expand_grad`.
    """
    xp = get_array_module(routing.logits)
    index = xp.flatnonzero(mask[routing.sample])
    renumber = xp.cumsum(mask) - 1  # (N,) new number of each counted sample

    def rows(a):
        return None if a is None else a[mask]

    lengths = routing.seq_lengths
    if lengths is not None:
        seq = xp.repeat(xp.arange(len(lengths)), [int(t) for t in lengths])
        counts = to_numpy(xp.bincount(seq[mask], minlength=len(lengths)))
        lengths = [int(c) for c in counts if c > 0]
    sub = routing._replace(sample=renumber[routing.sample[index]], expert=routing.expert[index],
                           weight=routing.weight[index], kept=routing.kept[index], logits=rows(routing.logits),
                           clean=rows(routing.clean), sigma=rows(routing.sigma), eps=rows(routing.eps),
                           probs=rows(routing.probs), scores=rows(routing.scores), seq_lengths=lengths)
    return sub, index


def expand_grad(grad, routing, mask, index):
    """A gradient of ``select_samples(routing, mask)`` as a gradient of ``routing``: zeros at the padding."""
    xp = get_array_module(routing.logits)
    out = {}
    for key, g in grad.items():
        full = xp.zeros(routing.weight.shape if key == "weight" else routing.logits.shape, dtype=g.dtype)
        if key == "weight":
            full[index] = g
        else:
            full[mask] = g
        out[key] = full
    return out


class MultiLayer:
    """One balance loss over the routings of several MoE layers, in either convention frameworks use.

    Parameters
    ----------
    loss : a BalanceLoss (its class and configuration are reused per layer).
    mode : "mean": the average of the per-layer losses (each layer's own statistics);
        "concat": one loss over all layers' routings concatenated as if they were one layer of
        L N samples (HuggingFace Mixtral / Qwen2-MoE ``load_balancing_loss_func``, which concatenates
        the layers' router logits).

    ``value = agg(routings)`` (routings of layers with the same E and K), then ``agg.backward()`` is the
    list of the layers' routing gradients, which ``MoE.backward(dy, routing_grad=...)`` takes.

    Notes
    -----
    mean: L = (1/L) sum_l loss(r_l), d r_l = (1/L) dloss(r_l). concat: the samples of layer l are rows
    l N .. (l + 1) N - 1 of the concatenation; its gradient is split back by rows and assignments.
    """

    MODES = ("mean", "concat")

    def __init__(self, loss, mode="mean"):
        if not isinstance(loss, BalanceLoss):
            raise TypeError(f"loss={loss!r} must be a numpy_moe.balance loss object")
        if mode not in self.MODES:
            raise ValueError(f"mode={mode!r} must be one of {self.MODES}")
        self.loss, self.mode = loss, mode

    def __call__(self, routings):
        xp = get_array_module(routings[0].logits)
        self.routings = list(routings)
        if self.mode == "mean":
            self.losses = [type(self.loss).from_config(self.loss.get_config()) for _ in self.routings]
            return sum(loss(r) for loss, r in zip(self.losses, self.routings)) / len(self.routings)
        shapes = {(r.logits.shape[1], r.top_k) for r in self.routings}
        if len(shapes) > 1:
            raise ValueError(f"mode='concat' needs layers with the same n_experts and top_k; got {sorted(shapes)}")
        offsets = [0]
        for r in self.routings:
            offsets.append(offsets[-1] + r.logits.shape[0])
        self.offsets = offsets

        def cat(field):
            parts = [getattr(r, field) for r in self.routings]
            return None if any(p is None for p in parts) else xp.concatenate(parts)

        first = self.routings[0]
        seq = [list(r.seq_lengths) if r.seq_lengths is not None else [r.logits.shape[0]] for r in self.routings]
        joined = first._replace(
            sample=xp.concatenate([r.sample + o for r, o in zip(self.routings, offsets)]),
            **{f: cat(f) for f in ("expert", "weight", "kept", "logits", "clean", "sigma", "eps", "probs", "scores")},
            seq_lengths=sum(seq, []))
        return self.loss(joined)

    def backward(self):
        """The gradient of each layer's routing (a list of dicts, one per routing given to the call)."""
        L = len(self.routings)
        if self.mode == "mean":
            return [{k: g / L for k, g in loss.backward().items()} for loss in self.losses]
        grad = self.loss.backward()
        out, a = [], 0
        for r, lo, hi in zip(self.routings, self.offsets[:-1], self.offsets[1:]):
            m = r.weight.shape[0]
            out.append({k: g[a:a + m] if k == "weight" else g[lo:hi] for k, g in grad.items()})
            a += m
        return out
