"""Post 002 on wine: the dense MoE reaches F1 >= 0.95, float32 and float64 agree, runs repeat exactly."""
import numpy as np
from sklearn.metrics import f1_score

from experiments.wine import train_dense_moe, wine_split
from numpy_moe.train import predict


def test_dense_moe_on_wine_f1_and_dtype_agreement_and_determinism():
    X_train, X_test, y_train, y_test = wine_split()
    m64 = train_dense_moe(X_train, y_train, dtype="float64")
    m32 = train_dense_moe(X_train, y_train, dtype="float32")
    p64 = predict(m64, X_test).argmax(axis=1)
    p32 = predict(m32, X_test).argmax(axis=1)
    assert f1_score(y_test, p64, average="macro") >= 0.95
    np.testing.assert_array_equal(p32, p64)
    again = predict(train_dense_moe(X_train, y_train, dtype="float64"), X_test)
    assert np.array_equal(again, predict(m64, X_test)), "same seed must give bit-identical outputs"
