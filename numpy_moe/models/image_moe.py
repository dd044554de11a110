"""Post 000's image classifier: a small conv net whose features go to a sparse top-2 MoE, then a linear layer.

    conv 3x3 (C_in -> c1, padding 1) - ReLU - maxpool 2 - conv 3x3 (c1 -> c2, padding 1) - ReLU - maxpool 2
    - flatten (c2 (s/4)² features) - MoE: top-2 of 4 MLP experts D -> H -> H - linear H -> classes

The post's code (PyTorch, CIFAR-10: 32x32x3, c1 = 32, c2 = 64, H = 512) gates with softmax, keeps the two
largest probabilities without renormalising (``softmax_then_topk``) and adds ``0.01 * std(c / sum c)``
over the hard selection counts c as a "balance loss". That loss is piecewise constant, so its gradient
is zero and it balances nothing (MATH.md §3); ``balance="importance_load"`` swaps in V-MoE's noisy
gate with the importance and load losses, which do balance the experts.

The post hard-codes the MoE input as 64 * 8 * 8 = 4096 features (32x32 inputs after two pools); here it
is computed from ``image_size`` and ``channels`` (on the 8x8 digits: 64 * 2 * 2 = 256).
"""
from ..backend import default_rng
from ..image_layers import Conv2d, Flatten, MaxPool2d, check_images
from ..layers import Linear, Module, ReLU, Sequential
from ..moe import MoE
from ..validation import check_positive_int

BALANCES = (None, "seed000", "importance_load")


class ImageMoEClassifier(Module):
    """Conv feature extractor + sparse top-k MoE of MLP experts + linear classifier (post 000).

    Parameters
    ----------
    in_channels : channels of the input images (3 for CIFAR-10, 1 for digits).
    image_size : side of the square input images (>= 4; two 2x2 pools floor it to image_size // 4).
    channels : (c1, c2), output channels of the two convolutions.
    hidden : H, hidden width and output width of each MLP expert (the classifier reads H features).
    n_classes : C. n_experts : E. top_k : K.
    balance : None, "seed000" (the post's loss, zero gradient) or "importance_load" (V-MoE noise with
        std 1 / E on the gate logits during training, importance + load losses).
    balance_weight : weight of the post's loss, or of each of importance and load.
    seed : int or numpy Generator. dtype : float32 or float64.

    Shapes: x (N, in_channels, image_size, image_size) -> logits (N, n_classes).
    Children: ``features`` (Sequential of the conv layers and Flatten), ``moe`` (numpy_moe.moe.MoE),
    ``classifier`` (Linear).
    """

    def __init__(self, in_channels=3, image_size=32, channels=(32, 64), hidden=512, n_classes=10,
                 n_experts=4, top_k=2, balance="seed000", balance_weight=0.01, seed=None, dtype="float64"):
        super().__init__(dtype)
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.image_size = check_positive_int(image_size, "image_size", minimum=4)
        if not hasattr(channels, "__len__") or len(channels) != 2:  # 64 raised "object of type 'int' has no len()"
            raise ValueError(f"channels={channels!r} must be a pair (c1, c2)")
        c1, c2 = (check_positive_int(c, "channels") for c in channels)
        hidden = check_positive_int(hidden, "hidden")  # named here, not as the out_features of a layer built below
        n_classes = check_positive_int(n_classes, "n_classes")
        if balance not in BALANCES:
            raise ValueError(f"balance={balance!r} must be one of {BALANCES}")
        rng = default_rng(seed)
        self.features = Sequential(
            Conv2d(in_channels, c1, 3, padding=1, seed=rng, dtype=dtype), ReLU(dtype), MaxPool2d(2),
            Conv2d(c1, c2, 3, padding=1, seed=rng, dtype=dtype), ReLU(dtype), MaxPool2d(2), Flatten())
        D = c2 * (self.image_size // 4) ** 2
        moe_kwargs = {None: {}, "seed000": dict(balance={"seed000": balance_weight}),
                      "importance_load": dict(noise="vmoe",
                                              balance={"importance": balance_weight, "load": balance_weight})}
        self.moe = MoE(D, hidden, n_experts, hidden=hidden, seed=rng, dtype=dtype, top_k=top_k,
                       **moe_kwargs[balance])
        self.classifier = Linear(hidden, n_classes, seed=rng, dtype=dtype)

    def forward(self, x):
        x = check_images(x, self.in_channels, self.dtype, min_images=1)  # the MoE layers need a sample
        if x.shape[2:] != (self.image_size, self.image_size):
            raise ValueError(f"x has images of size {x.shape[2]}x{x.shape[3]}; "
                             f"expected {self.image_size}x{self.image_size}")
        f = self.features.forward(x)  # (N, c2 (s/4)²)
        return self.classifier.forward(self.moe.forward(f))  # (N, n_classes)

    def backward(self, dy):
        return self.features.backward(self.moe.backward(self.classifier.backward(dy)))
