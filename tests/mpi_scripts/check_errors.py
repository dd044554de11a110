"""Run under ``mpiexec -n 2``: bad input raises the same clear error on every rank, and nobody hangs.

Each case makes one rank's input (or arguments) bad; every rank must raise a ValueError that names the
failing rank, so no rank is left waiting in a collective. A rank with zero samples must just work. The
default seed=None gives every rank the same parameters, and a seed that would not is refused. Each
rank prints ``OK rank r`` at the end; anything else raises and aborts every rank.
"""
import numpy as np

from numpy_moe.parallel import Comm, ExpertParallelMoE, abort_on_error


def expect_error(fragments, fn):
    try:
        fn()
    except ValueError as error:
        for fragment in fragments:
            assert fragment in str(error), f"{fragment!r} not in the error {error}"
        return str(error)
    raise AssertionError(f"no ValueError; expected one mentioning {fragments}")


def main():
    comm = Comm()
    assert comm.size == 2, "run with mpiexec -n 2"
    rng = np.random.default_rng(comm.rank)
    expect_error(["n_experts=3 must be divisible by the number of ranks (2)"],
                 lambda: ExpertParallelMoE(4, 2, 3, seed=0, top_k=1))
    expect_error(["every rank must build the layer with the same arguments", "rank 1"],
                 lambda: ExpertParallelMoE(4, 2, 4, hidden=3 + comm.rank, seed=0, top_k=1))
    # the default seed=None must give every rank the same parameters (rank 0's draw), not one draw per rank
    layer = ExpertParallelMoE(4, 2, 4, hidden=3, top_k=2, noise="vmoe")
    for key, p in layer.gate.params.items():
        copies = comm.allgather(p)
        assert all(np.array_equal(copies[0], c) for c in copies), f"gate.{key} differs between the ranks"
    x = rng.standard_normal((3, 4))
    reference = ExpertParallelMoE(4, 2, 4, hidden=3, top_k=2, noise="vmoe", seed=comm.allgather(layer.seed)[0])
    assert np.array_equal(layer.forward(x), reference.forward(x)), "seed=None is not the shared seed's layer"
    # Generators in different states would build a different gate on each rank: refused on every rank
    expect_error(["seed", "different parameters on different ranks"],
                 lambda: ExpertParallelMoE(4, 2, 4, hidden=3, top_k=2, seed=np.random.default_rng(comm.rank)))
    layer = ExpertParallelMoE(4, 2, 4, hidden=3, seed=0, top_k=2)
    x = rng.standard_normal((5, 4 + comm.rank))  # rank 1 has 5 features
    expect_error(["rank 1: x has 5 features", "expected 4"], lambda: layer.forward(x))
    x = rng.standard_normal((5, 4)).astype("float32" if comm.rank else "float64")
    expect_error(["different dtype on different ranks", "rank 0: float64", "rank 1: float32"],
                 lambda: layer.forward(x))
    x = rng.standard_normal((5, 4))
    if comm.rank == 1:
        x[2, 1] = np.nan
    expect_error(["rank 1: x contains NaN"], lambda: layer.forward(x))
    for mode, cf in (("dropless", None), ("padded", 1.0)):  # rank 0 has no samples: it must just work
        layer = ExpertParallelMoE(4, 2, 4, hidden=3, seed=0, top_k=2, mode=mode, capacity_factor=cf,
                                  balance={"importance": 0.1, "switch": 0.1})
        x = rng.standard_normal((0 if comm.rank == 0 else 6, 4))
        y = layer.forward(x)
        dx = layer.backward(np.ones_like(y))
        assert y.shape == (x.shape[0], 2) and dx.shape == x.shape
        assert np.isfinite(layer.aux_loss) and all(np.isfinite(g).all() for g in layer.gate.grads.values())
    print(f"OK rank {comm.rank}", flush=True)


if __name__ == "__main__":
    with abort_on_error():
        main()
