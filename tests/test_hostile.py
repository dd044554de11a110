"""Hostile input: files that try to run code or exhaust memory, failed saves, diverging fits, bad arguments.

One row per probe of the hardening issue. Code-execution probes assert that no marker file appeared and
no victim file changed; resource probes measure the memory a refused load allocated (tracemalloc sees
NumPy's buffers) instead of timing it; failed saves run in a subprocess under a file-size limit or with
an exception injected mid-write and then check the old file byte for byte.
"""
import json
import os
import re
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile

import numpy as np
import pytest
import scipy.sparse
from sklearn.exceptions import NotFittedError

from numpy_moe import io
from numpy_moe.classic import LocalExperts, fit_local_experts
from numpy_moe.estimators import LocalExpertsClassifier, LocalExpertsRegressor, MoEClassifier, MoERegressor
from numpy_moe.layers import Linear
from numpy_moe.moe import MoE
from numpy_moe.optim import SGD, Adam

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def craft(path, obj, arrays=None, meta=None):
    """An .npz whose __meta__ holds ``obj`` as the object record (or the raw ``meta`` string)."""
    text = meta if meta is not None else json.dumps({"format": "numpy-moe", "version": 2, "object": obj})
    np.savez(path, __meta__=np.array(text), **(arrays or {}))
    return path


def good_moe_record(tmp_path):
    """The record and arrays of a small valid MoE file, to tamper with."""
    path = io.save(MoE(3, 2, 2, seed=0), tmp_path / "good.npz")
    with np.load(path) as npz:
        arrays = dict(npz)
    return json.loads(str(arrays.pop("__meta__")))["object"], arrays


# ----- 1. a file never runs code ------------------------------------------------------------------
def popen(args, **kw):
    return {"class": "subprocess:Popen", "estimator": {"args": args, **kw}, "attributes": {}}


CODE_PROBES = {
    "Popen argument list": lambda m, v: popen(["touch", m]),
    "Popen shell string": lambda m, v: popen(f"id > {m}", shell=True),
    "Popen as a module record": lambda m, v: {"class": "subprocess:Popen", "config": {"args": ["touch", m]},
                                               "params": ""},
    "io.FileIO truncating a file": lambda m, v: {"class": "io:FileIO", "estimator": {"file": v, "mode": "w"},
                                                 "attributes": {}},
    "attribute walk numpy_moe.io:zipfile.ZipFile": lambda m, v: {
        "class": "numpy_moe.io:zipfile.ZipFile", "estimator": {"file": v, "mode": "w"}, "attributes": {}},
    "ctypes.CDLL": lambda m, v: {"class": "ctypes:CDLL", "estimator": {"name": "libc.so.6"}, "attributes": {}},
    "os.system via a module record": lambda m, v: {"class": "os:system", "config": {"command": f"touch {m}"},
                                                   "params": ""},
}


@pytest.mark.parametrize("probe", CODE_PROBES)
def test_a_file_naming_an_unregistered_class_runs_nothing(probe, tmp_path):
    marker, victim = tmp_path / "marker", tmp_path / "victim.txt"
    victim.write_text("precious")
    record = CODE_PROBES[probe](str(marker), str(victim))
    path = craft(tmp_path / "evil.npz", record)
    with pytest.raises(ValueError, match=rf"evil.npz: .*class '{record['class']}' is not registered"):
        io.load(path)
    assert not marker.exists() and victim.read_text() == "precious"


@pytest.mark.parametrize("where", ["config value", "balance dict", "pipeline step", "fitted attribute"])
def test_a_nested_record_is_checked_before_anything_is_built(where, tmp_path):
    marker = tmp_path / "marker"
    evil = {"__estimator__": popen(["touch", str(marker)])}
    record, arrays = good_moe_record(tmp_path)
    if where == "config value":
        record["config"]["hidden"] = evil
    elif where == "balance dict":
        record["config"]["balance"] = {"switch": {"__module__": {"class": "subprocess:Popen",
                                                                 "config": {"args": ["touch", str(marker)]}}}}
    elif where == "pipeline step":
        record = {"class": "sklearn.pipeline:Pipeline", "estimator": {"steps": [["evil", evil]]}, "attributes": {}}
    else:
        record = {"class": "numpy_moe.estimators:MoEClassifier", "estimator": {}, "attributes": {"model_": evil}}
    with pytest.raises(ValueError, match="evil.npz"):
        io.load(craft(tmp_path / "evil.npz", record, arrays))
    assert not marker.exists()


def test_loading_imports_no_module_the_file_names(tmp_path):
    """In a fresh interpreter: names of real but unregistered classes import nothing."""
    script = textwrap.dedent(f"""
        import json, sys, numpy as np
        from numpy_moe import io
        names = ["sklearn.ensemble:RandomForestClassifier", "sklearn.tree:DecisionTreeClassifier",
                 "numpy_moe.plotting:plot_decision_regions", "numpy_moe.datasets:v_shape"]
        io.registered()  # the registry's own imports happen first
        before = {{n.split(":")[0] for n in names if n.split(":")[0] in sys.modules}}
        for i, name in enumerate(names):
            meta = json.dumps({{"format": "numpy-moe", "version": 2,
                               "object": {{"class": name, "estimator": {{}}, "attributes": {{}}}}}})
            np.savez(r"{tmp_path}/f%d.npz" % i, __meta__=np.array(meta))
            try:
                io.load(r"{tmp_path}/f%d.npz" % i)
            except ValueError as err:
                assert "is not registered" in str(err), err
        print(sorted(before), sorted(n.split(":")[0] for n in names if n.split(":")[0] in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]", "[]"], out.stdout


def test_the_docs_list_exactly_the_loadable_scikit_learn_classes():
    # before, the io docstring also listed PolynomialFeatures and SimpleImputer, which a file may not name
    from numpy_moe.io.registry import SKLEARN_CLASSES
    names = {name for _, name in SKLEARN_CLASSES}
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    listed = {"docstring": re.search(r"scikit-learn classes \(([^)]*)\)", io.__doc__).group(1),
              "README": re.search(r"a fixed list of scikit-learn classes\s+\(([^)]*)\)", readme).group(1)}
    for where, text in listed.items():
        assert set(re.findall(r"\w+", text)) == names, where


def test_user_classes_load_only_once_registered(tmp_path):
    class Mine(Linear):
        pass
    path = io.save(Mine(2, 2, seed=0), tmp_path / "mine.npz")
    with pytest.raises(ValueError, match=r"Mine' is not registered as loadable.*numpy_moe.io.register"):
        io.load(path)
    io.register(Mine)
    assert type(io.load(path)) is Mine
    with pytest.raises(TypeError, match="only numpy_moe Modules and scikit-learn estimators"):
        io.register(subprocess.Popen)


# ----- 1. limits before work ----------------------------------------------------------------------
def peak_bytes(f):
    """The peak of traced allocations (NumPy's buffers included) while ``f`` runs."""
    tracemalloc.start()
    try:
        f()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_an_entry_claiming_3_gib_is_refused_before_decompression(tmp_path):
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("__meta__.npy", "w") as f:
            np.lib.format.write_array(f, np.array(json.dumps({"format": "numpy-moe", "version": 2, "object": {}})))
        with zf.open("W.npy", "w", force_zip64=True) as f:  # a header for 3 GiB of zeros, then 1 MiB of them
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False,
                                                     "shape": (3 * 2 ** 30,)})
            f.write(bytes(2 ** 20))
    errors = []
    peak = peak_bytes(lambda: errors.append(pytest.raises(ValueError, io.load, path)))
    assert "more than max_bytes=2147483648 bytes" in str(errors[0].value) and "'W'" in str(errors[0].value)
    assert peak < 2 ** 20, f"{peak} bytes allocated before refusing"


def test_a_real_deflated_entry_over_max_bytes_is_never_decompressed(tmp_path):
    path = tmp_path / "zeros.npz"
    arrays = {"__meta__": np.array(json.dumps({"format": "numpy-moe", "version": 2, "object": {}})),
              "W": np.zeros(2 ** 23)}  # 64 MiB of zeros, about 64 KiB deflated
    np.savez_compressed(path, **arrays)
    assert path.stat().st_size < 2 ** 20
    errors = []
    peak = peak_bytes(lambda: errors.append(pytest.raises(ValueError, io.load, path, max_bytes=2 ** 20)))
    assert "more than max_bytes=1048576" in str(errors[0].value)
    assert peak < 2 ** 20, f"{peak} bytes allocated before refusing"


def test_max_bytes_is_a_budget_for_all_entries_together(tmp_path):
    # the two tests above have one entry over the limit; here each of two fits alone, not both together
    path = craft(tmp_path / "two.npz", {}, {"W": np.zeros(2 ** 16), "V": np.zeros(2 ** 16)})  # 512 KiB each
    with pytest.raises(ValueError, match=r"more than max_bytes=786432 bytes"):
        io.load(path, max_bytes=3 * 2 ** 18)


def _zip_of_empty_entries(path, names, end_entries=None, end_directory=None, zip64=False):
    """A zip of empty stored entries, written byte by byte (zipfile takes seconds for 10^5 of them); the end
    record may claim another entry count or directory size, or come in its Zip64 form."""
    import struct
    local, central = bytearray(), bytearray()
    for name in names:
        raw = name.encode()
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, len(raw), 0, 0, 0, 0, 0,
                               len(local)) + raw
        local += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, len(raw), 0) + raw
    n = len(names) if end_entries is None else end_entries
    size = len(central) if end_directory is None else end_directory
    end = b""
    if zip64:
        end += struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, size, len(local))
        end += struct.pack("<4sLQL", b"PK\x06\x07", 0, len(local) + len(central), 1)
        n, size = 0xFFFF, 0xFFFFFFFF
    end += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, min(n, 0xFFFF), min(n, 0xFFFF), min(size, 0xFFFFFFFF),
                       min(len(local), 0xFFFFFFFF), 0)
    path.write_bytes(bytes(local + central + end))
    return path


def test_a_zip_directory_of_too_many_entries_is_refused_before_it_is_parsed(tmp_path):
    # 150 000 empty entries (more than 65 535, so the count is in the Zip64 end record, as zip writers put it):
    # 14 MB of file, whose directory zipfile parses into 150 000 ZipInfo objects (74 MB measured) before the
    # entry count could be checked; the end record announces the count first
    names = [f"{i:07d}.npy" for i in range(150_000)]
    path = _zip_of_empty_entries(tmp_path / "many.npz", names, zip64=True)
    errors = []
    peak = peak_bytes(lambda: errors.append(pytest.raises(ValueError, io.load, path)))
    assert "150000 entries, more than the 100000 allowed" in str(errors[0].value)
    assert peak < 2 ** 20, f"{peak} bytes allocated before refusing"


def test_a_zip64_locator_pointing_past_the_end_of_the_file_is_a_file_error(tmp_path):
    # the locator's offset is a 64-bit field: 2**64 - 1 cannot even be seeked to (OverflowError)
    import struct
    path = _zip_of_empty_entries(tmp_path / "far.npz", ["a.npy"], zip64=True)
    data = bytearray(path.read_bytes())
    at = data.rfind(b"PK\x06\x07")
    data[at + 8:at + 16] = struct.pack("<Q", 2 ** 64 - 1)
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="far.npz"):
        io.load(path)


def test_a_directory_entry_asking_for_a_zip_version_python_cannot_read_is_a_file_error(tmp_path):
    # zipfile raises NotImplementedError("zip file version 7.9") while it parses the directory; found by
    # flipping random bytes of a saved model (11 of 1500 such files gave it instead of a FileError)
    path = tmp_path / "new.npz"
    io.save(Linear(3, 2, seed=0), path)
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")  # the first directory entry: version made by (2 bytes), version needed
    data[at + 6] = 79
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="new.npz is not a valid numpy-moe .npz file"):
        io.load(path)


def test_an_end_record_that_understates_the_entries_is_bounded_by_its_directory_size(tmp_path):
    # an end record may claim one entry for a directory of 20 MB: zipfile parses as many bytes as the
    # record's directory size says, whatever the count, so the size is checked too (at most 16 MiB, whose
    # objects take at most about 9 times that)
    names = [f"{i:07d}" + "x" * 200 + ".npy" for i in range(80_000)]
    path = _zip_of_empty_entries(tmp_path / "liar.npz", names, end_entries=1)
    errors = []
    peak = peak_bytes(lambda: errors.append(pytest.raises(ValueError, io.load, path)))
    assert re.search(r"a zip directory of \d+ bytes, more than the 16777216 allowed", str(errors[0].value))
    assert peak < 2 ** 20, f"{peak} bytes allocated before refusing"


def _with_raw_entries(path, out, headers):
    """Copy the .npz ``path`` to ``out`` adding one entry per {name: .npy header dict}, with no data."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        for name, header in headers.items():
            with dst.open(f"{name}.npy", "w") as f:
                np.lib.format.write_array_header_1_0(f, header)
    return out


@pytest.mark.parametrize("header, message", [
    ({"descr": "<f8", "fortran_order": False, "shape": (-2 ** 40,)}, "shape (-1099511627776,)"),
    ({"descr": "<f8", "fortran_order": False, "shape": (3, -1)}, "shape (3, -1)"),
    ({"descr": "<U0", "fortran_order": False, "shape": (10 ** 12,)}, "dtype <U0"),
    ({"descr": "|S0", "fortran_order": False, "shape": (10 ** 12,)}, "dtype |S0"),
])
def test_headers_that_would_dodge_max_bytes_are_refused(header, message, tmp_path):
    # Before, a negative dimension counted negative bytes, so one such entry let the others take 8 TiB more
    # than max_bytes; an itemsize-0 string dtype counted 0 bytes for 10^12 elements (np.unique on them,
    # as the classes_ check does, allocates 4 bytes per element).
    record, arrays = good_moe_record(tmp_path)
    path = _with_raw_entries(craft(tmp_path / "m.npz", record, arrays), tmp_path / "bad.npz", {"odd": header})
    with pytest.raises(ValueError, match=r"bad.npz is not a valid numpy-moe .npz file: entry 'odd' .*" + re.escape(message)):
        io.load(path)


def test_a_transformer_claiming_a_huge_input_width_is_refused_before_its_check_row_is_allocated(tmp_path):
    # A scaler that neither centres nor scales holds no array, so any n_features_in_ is consistent; checking
    # it transforms one row of n_features_in_ zeros, which StandardScaler copies. Before, this 1.3 KB file
    # made load allocate 8 n_features_in_ bytes whatever max_bytes said (16 GiB for 2^31).
    n = 2 ** 24  # 128 MiB
    obj = {"class": "sklearn.preprocessing._data:StandardScaler", "estimator": {"with_mean": False, "with_std": False},
           "attributes": {"n_features_in_": n, "n_samples_seen_": 5, "mean_": None, "var_": None, "scale_": None}}
    path = craft(tmp_path / "wide.npz", obj)
    io.registered()  # the registry's imports are not the file's doing
    errors = []
    peak = peak_bytes(lambda: errors.append(pytest.raises(ValueError, io.load, path, max_bytes=2 ** 20)))
    assert re.search(r"wide.npz: .*n_features_in_=16777216.*max_bytes=1048576", str(errors[0].value))
    assert peak < 2 ** 20, f"{peak} bytes allocated before refusing"
    assert io.load(path, max_bytes=2 ** 28).n_features_in_ == n  # within max_bytes it is a valid file


@pytest.mark.parametrize("key, value", [("hidden", 30_000_000), ("n_experts", 10 ** 9), ("in_features", 10 ** 12)])
def test_a_configuration_larger_than_the_stored_parameters_is_refused_before_allocating(key, value, tmp_path):
    record, arrays = good_moe_record(tmp_path)
    record["config"][key] = value
    path = craft(tmp_path / "big.npz", record, arrays)
    errors = []
    peak = peak_bytes(lambda: errors.append(pytest.raises(ValueError, io.load, path)))
    assert "needs more parameters than the file holds" in str(errors[0].value)
    assert peak < 2 ** 20, f"{peak} bytes allocated before refusing"


def _many_references(kind, n):
    """A StandardScaler record whose n attributes all read the same arrays (1 MiB of zeros, a few KB deflated)."""
    if kind == "one array read n times":
        attributes, arrays = {f"a{i}_": {"__array__": "big"} for i in range(n)}, {"big": np.zeros(2 ** 17)}
    else:
        module = {"class": "numpy_moe.layers:Linear", "config": {"in_features": 256, "out_features": 512},
                  "params": "m/"}
        attributes = {f"a{i}_": {"__module__": module} for i in range(n)}
        arrays = {"m/W": np.zeros((256, 512)), "m/b": np.zeros(512)}
    if kind == "a module over another's parameters":
        attributes = {"a_": {"__module__": {**module, "params": "m/"}}, "b_": {"__module__": {**module, "params": ""}}}
    return {"class": "sklearn.preprocessing._data:StandardScaler", "estimator": {}, "attributes": attributes}, arrays


@pytest.mark.parametrize("kind, message", [
    ("one array read n times", "refers to array 'big', which object.a0_ already uses"),
    ("one set of parameters rebuilt n times", "its parameters 'm/' overlap those of object.a"),
    ("a module over another's parameters", "its parameters 'm/' overlap those of object.b_ \\(''\\)"),
])
def test_records_sharing_arrays_are_refused_before_anything_is_built(kind, message, tmp_path):
    # Before, each reference was built or read again within max_bytes: with 300 references this 3 KB file,
    # loaded with max_bytes=4 MiB, took 300 MB (an array) or 620 MB (a Linear) and loaded without an error.
    obj, arrays = _many_references(kind, 300)
    path = tmp_path / "shared.npz"
    np.savez_compressed(path, __meta__=np.array(json.dumps({"format": "numpy-moe", "version": 2, "object": obj})),
                        **arrays)
    io.registered()  # the registry's imports are not the file's doing
    errors = []
    peak = peak_bytes(lambda: errors.append(pytest.raises(ValueError, io.load, path, max_bytes=4 * 2 ** 20)))
    assert re.search(message, str(errors[0].value)), str(errors[0].value)
    assert "every array of a file belongs to one record" in str(errors[0].value)
    assert peak < 2 ** 20, f"{peak} bytes allocated before refusing"


def test_buffers_stored_away_from_their_module_are_refused(tmp_path):
    from numpy_moe.gates import ScoreGate
    path = io.save(ScoreGate(4, 3, top_k=2, seed=0), tmp_path / "g.npz")
    with np.load(path) as npz:
        arrays = dict(npz)
    record = json.loads(str(arrays.pop("__meta__")))["object"]
    assert record["buffers"] == "buffer:"
    record["buffers"] = "elsewhere:"
    with pytest.raises(ValueError, match="buffers is 'elsewhere:'; a module's buffers are stored under its parameters"):
        io.load(craft(tmp_path / "b.npz", record, arrays))


@pytest.mark.parametrize("tree", [10 ** 9, [1] * 100_000, [[10 ** 8] * 3, 2]])
def test_a_hierarchical_tree_larger_than_the_stored_parameters_is_refused_before_it_is_walked(tree, tmp_path):
    # parse_tree builds one list entry per leaf; before, it ran before any parameter met the budget, so a
    # 1.6 KB file with tree=10**7 took 1.5 GB before being refused (10**9: about 100 GB)
    from numpy_moe.hme import HierarchicalMoE
    path = io.save(HierarchicalMoE(3, 1, tree=2, seed=0), tmp_path / "h.npz")
    with np.load(path) as npz:
        arrays = dict(npz)
    record = json.loads(str(arrays.pop("__meta__")))["object"]
    record["config"]["tree"] = tree
    path = craft(tmp_path / "big.npz", record, arrays)
    io.registered()  # the registry's imports are not the file's doing
    errors = []
    peak = peak_bytes(lambda: errors.append(pytest.raises(ValueError, io.load, path)))
    assert "needs more parameters than the file holds" in str(errors[0].value)
    assert peak < 2 ** 20 + 20 * len(json.dumps(tree)), f"{peak} bytes allocated before refusing"


# ----- 1. malformed metadata ------------------------------------------------------------------------
def _deep(n):
    return "[" * n + "]" * n


MALFORMED = {
    "not JSON": (dict(meta="{not json"), "metadata is not JSON"),
    "a JSON list": (dict(meta="[1, 2]"), "metadata is a JSON list, not an object"),
    "a JSON number": (dict(meta="3"), "metadata is a JSON int, not an object"),
    "another format": (dict(meta=json.dumps({"format": "pickle", "version": 2, "object": {}})),
                       "format 'pickle' version 2; expected 'numpy-moe'"),
    "no object": (dict(meta=json.dumps({"format": "numpy-moe", "version": 2})), "has no \"object\" record"),
    "nesting 100 000 deep": (dict(meta='{"format": "numpy-moe", "version": 2, "object": ' + _deep(100_000) + "}"),
                             "nested too deeply"),
    "nesting 60 deep in a config": (dict(obj="deep config"), "nested more than 64 levels deep"),
    "object is a list": (dict(obj=[1]), "expected an object record"),
    "no class": (dict(obj={"config": {}}), "the record has no class name"),
    "class is a number": (dict(obj={"class": 3, "config": {}}), "the record has no class name"),
    "module without config": (dict(obj={"class": "numpy_moe.layers:Linear", "params": ""}),
                              r"record keys missing \['config'\]"),
    "module without params": (dict(obj={"class": "numpy_moe.layers:Linear", "config": {}}),
                              r"record keys missing \['params'\]"),
    "config is a list": (dict(obj={"class": "numpy_moe.layers:Linear", "config": [2, 3], "params": ""}),
                         "config is a list, not a JSON object"),
    "estimator params are a list": (dict(obj={"class": "numpy_moe.estimators:MoEClassifier", "estimator": [1],
                                              "attributes": {}}), "must be JSON objects, found list"),
    "unknown estimator parameter": (dict(obj={"class": "numpy_moe.estimators:MoEClassifier",
                                              "estimator": {"shell": True}, "attributes": {}}),
                                    r"takes no parameters \['shell'\]"),
    "__class__ attribute": (dict(obj={"class": "numpy_moe.estimators:MoEClassifier", "estimator": {},
                                      "attributes": {"__class__": "x"}}), "'__class__' is not a fitted attribute"),
    "__class__ key in a config": (dict(obj="dunder config"), r"keys \['__class__'\] are not allowed here"),
    "missing array": (dict(obj={"class": "numpy_moe.estimators:MoEClassifier", "estimator": {},
                                "attributes": {"classes_": {"__array__": "nope"}}}),
                      "refers to array 'nope', which the file does not hold"),
    "__meta__ as an array reference": (dict(obj={"class": "numpy_moe.estimators:MoEClassifier", "estimator": {},
                                                 "attributes": {"classes_": {"__array__": "__meta__"}}}),
                                       "refers to array '__meta__'"),
    "module where an estimator belongs": (dict(obj={"class": "sklearn.pipeline:Pipeline", "estimator": {
        "steps": [["m", {"__estimator__": {"class": "numpy_moe.layers:Linear", "config": {}, "params": ""}}]]},
        "attributes": {}}), "is a Module where an estimator is expected"),
    "wrong constructor argument type": (dict(obj="string in_features"),
                                        "cannot rebuild numpy_moe.moe:MoE .*in_features='3'"),
}


@pytest.mark.parametrize("probe", MALFORMED)
def test_malformed_metadata_is_a_value_error_naming_the_file(probe, tmp_path):
    kwargs, message = MALFORMED[probe]
    obj, arrays = kwargs.get("obj"), None
    if isinstance(obj, str):  # variants of a valid MoE record
        obj, arrays = good_moe_record(tmp_path)
        if kwargs["obj"] == "deep config":
            nested = 1
            for _ in range(70):
                nested = {"a": nested}
            obj["config"]["balance"] = nested
        elif kwargs["obj"] == "dunder config":
            obj["config"]["balance"] = {"__class__": "x"}
        else:
            obj["config"]["in_features"] = "3"
    path = craft(tmp_path / "bad.npz", obj, arrays, kwargs.get("meta"))
    with pytest.raises(ValueError, match=message) as info:
        io.load(path)
    assert "bad.npz" in str(info.value)


@pytest.fixture(scope="module")
def fitted_classifier_file(tmp_path_factory):
    X = np.random.default_rng(0).standard_normal((60, 3))
    clf = MoEClassifier(epochs=3, random_state=0).fit(X, np.arange(60) % 3)
    path = io.save(clf, tmp_path_factory.mktemp("clf") / "clf.npz")
    with np.load(path) as npz:
        arrays = dict(npz)
    return json.loads(str(arrays.pop("__meta__")))["object"], arrays


TAMPERED = {
    "n_features_in_ a string": (lambda a, e: a.update(n_features_in_="three"), "n_features_in_='three' must be"),
    "n_features_in_ another number": (lambda a, e: a.update(n_features_in_=7), "model_ maps 3 features"),
    "classes_ repeated": (lambda a, e: e.update({"classes_": np.array([0, 0, 1])}), "sorted, distinct labels"),
    "classes_ one short": (lambda a, e: e.update({"classes_": np.array([0, 1])}), "to 3 outputs"),
    "loss_curve_ not a list": (lambda a, e: a.update(loss_curve_={"a": 1}), "loss_curve_ must be a list"),
    "unknown attribute": (lambda a, e: a.update(coef_=1), r"unknown \['coef_'\]"),
    "missing model_": (lambda a, e: a.pop("model_"), r"missing \['model_'\]"),
    "model_ a Linear": (lambda a, e: a.update(model_={"__module__": {"class": "numpy_moe.layers:Linear", "config": {
        "in_features": 3, "out_features": 3}, "params": "model_/"}}), "does not match the architecture|model_ is a"),
    # before, these loaded: a model_ other than the one the estimator's parameters build (with the same
    # parameter shapes) predicted, and the next fit built another model
    "model_ sparse for a dense estimator": (lambda a, e: a["model_"]["__module__"]["config"].update(top_k=2),
                                            r"model_ is not the model this estimator builds: top_k=2 \(the "
                                            r"estimator builds None\)"),
    "model_ with a residual": (lambda a, e: a["model_"]["__module__"]["config"].update(residual=True),
                               r"residual=True \(the estimator builds False\)"),
    "model_ with another gate convention": (lambda a, e: a["model_"]["__module__"]["config"].update(
        gate="topk_then_softmax"), "gate='topk_then_softmax'"),
}


@pytest.mark.parametrize("probe", TAMPERED)
def test_tampered_fitted_attributes_are_refused(probe, fitted_classifier_file, tmp_path):
    record, arrays = json.loads(json.dumps(fitted_classifier_file[0])), dict(fitted_classifier_file[1])
    change, message = TAMPERED[probe]
    change(record["attributes"], arrays)
    with pytest.raises(ValueError, match=message):
        io.load(craft(tmp_path / "t.npz", record, arrays))


@pytest.fixture(scope="module")
def fitted_hme_classifier_file(tmp_path_factory):
    from numpy_moe.estimators import HMEClassifier
    X = np.random.default_rng(0).standard_normal((60, 3))
    clf = HMEClassifier(tree=[2, 2], max_iter=5, random_state=0).fit(X, X[:, 0] > 0)
    path = io.save(clf, tmp_path_factory.mktemp("hme") / "hme.npz")
    with np.load(path) as npz:
        arrays = dict(npz)
    return json.loads(str(arrays.pop("__meta__")))["object"], arrays


def _hme_model(config):
    return {"__module__": {"class": "numpy_moe.hme:HierarchicalMoE", "params": "model_/",
                           "config": {"n_features": 3, "n_outputs": 2, "tree": [2, 2], "expert": "softmax",
                                      "dtype": "float64", **config}}}


# Before, the HME estimators had no check of their own: only predicting a row of zeros, which each of these
# passes (a Linear model_ loaded and gave "probabilities" summing to 1.9).
TAMPERED_HME = {
    "model_ a Linear": (lambda a, e: a.update(model_={"__module__": {"class": "numpy_moe.layers:Linear", "config": {
        "in_features": 3, "out_features": 2}, "params": "model_/x/"}}) or e.update({"model_/x/W": np.zeros((3, 2)),
                                                                                  "model_/x/b": np.zeros(2)}),
        "model_ is a Linear; expected a HierarchicalMoE of 'softmax' experts"),
    "another tree": (lambda a, e: a.update(model_=_hme_model({"tree": [[1, 1], 2]})), "model_ has tree=.*tree=.*2, 2"),
    "classes_ of 3 labels": (lambda a, e: e.update({"classes_": np.array([0, 1, 2])}), "3 classes"),
    "converged_ a string": (lambda a, e: a.update(converged_="yes"), "converged_='yes' must be True or False"),
    "curve of another length": (lambda a, e: a.update(n_iter_=a["n_iter_"] + 1),
                                "log_likelihood_curve_ must be a list of [0-9]+ numbers"),
    "unknown attribute": (lambda a, e: a.update(coef_=1), r"unknown \['coef_'\]"),
}


def test_an_unfitted_hme_estimator_with_a_huge_tree_loads_without_walking_it(tmp_path):
    obj = {"class": "numpy_moe.estimators.hme:HMERegressor", "estimator": {"tree": 10 ** 9}, "attributes": {}}
    io.registered()  # the registry's imports are not the file's doing
    peak = peak_bytes(lambda: io.load(craft(tmp_path / "tree.npz", obj)))
    assert peak < 2 ** 20, f"{peak} bytes allocated"


@pytest.mark.parametrize("probe", TAMPERED_HME)
def test_tampered_hme_estimator_attributes_are_refused(probe, fitted_hme_classifier_file, tmp_path):
    record, arrays = json.loads(json.dumps(fitted_hme_classifier_file[0])), dict(fitted_hme_classifier_file[1])
    assert io.load(craft(tmp_path / "ok.npz", record, arrays)).predict_proba(np.zeros((1, 3))).sum() == \
        pytest.approx(1)  # the untampered record loads
    change, message = TAMPERED_HME[probe]
    change(record["attributes"], arrays)
    with pytest.raises(ValueError, match=message):
        io.load(craft(tmp_path / "t.npz", record, arrays))


def test_pickled_entries_and_directories_are_refused(tmp_path):
    record, arrays = good_moe_record(tmp_path)
    arrays["extra"] = np.array([{"a": 1}], dtype=object)
    path = tmp_path / "pickle.npz"
    np.savez(path, __meta__=np.array(json.dumps({"format": "numpy-moe", "version": 2, "object": record})),
             **arrays)
    with pytest.raises(ValueError, match="entry 'extra' has dtype object; only plain numeric"):
        io.load(path)
    with pytest.raises(ValueError, match="is a directory, not a numpy-moe file"):
        io.load(tmp_path)
    with pytest.raises(TypeError, match="max_bytes=0 must be a positive int"):
        io.load(tmp_path / "good.npz", max_bytes=0)


# ----- 2. a failed save destroys nothing ----------------------------------------------------------
SAVE_SCRIPT = """
import os, resource, sys
import numpy as np
from numpy_moe import io
from numpy_moe.moe import MoE
mode, path = sys.argv[1], sys.argv[2]
if mode == "fsize":
    resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))  # the new file is ~0.5 MB
else:
    import numpy.lib.format as fmt
    write, calls = fmt.write_array, []
    def interrupted(*args, **kwargs):  # the third array is half written when Ctrl-C arrives
        calls.append(1)
        if len(calls) == 3:
            args[0].write(b"partial")
            raise KeyboardInterrupt
        return write(*args, **kwargs)
    fmt.write_array = interrupted
try:
    io.save(MoE(50, 50, 8, hidden=64, seed=1), path)
except BaseException as err:
    print(type(err).__name__, err)
"""


@pytest.mark.parametrize("mode, error", [("fsize", "OSError"), ("interrupt", "KeyboardInterrupt")])
def test_a_failed_save_leaves_the_previous_file_byte_identical(mode, error, tmp_path):
    model = MoE(4, 3, 2, seed=0)
    path = io.save(model, tmp_path / "model.npz")
    before = path.read_bytes()
    out = subprocess.run([sys.executable, "-c", SAVE_SCRIPT, mode, str(path)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.stdout.startswith(error), out.stdout + out.stderr
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.npz"], "a temporary file was left behind"
    loaded = io.load(path)
    assert all(np.array_equal(p, q) for (_, p), (_, q) in zip(loaded.named_parameters(), model.named_parameters()))


def test_non_finite_weights_and_directories_are_not_saved(tmp_path):
    model = MoE(4, 3, 2, seed=0)
    path = io.save(model, tmp_path / "model.npz")
    before = path.read_bytes()
    model.gate.params["W"][0, 0] = np.inf
    with pytest.raises(ValueError, match=r"refusing to save MoE: \['gate.W'\] contain NaN or inf"):
        io.save(model, path)
    assert path.read_bytes() == before
    with pytest.raises(IsADirectoryError, match="is a directory"):
        io.save(MoE(4, 3, 2, seed=0), tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]


def test_a_saved_file_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    path = io.save(MoE(4, 3, 2, seed=0), tmp_path / "model.npz")
    os.chmod(path, 0o640)
    io.save(MoE(4, 3, 2, seed=1), path)
    assert os.stat(path).st_mode & 0o777 == 0o640


def test_a_pipeline_file_cannot_choose_a_cache_directory_to_write_into(tmp_path):
    # Before, a file's Pipeline memory="<dir>" was loaded as is, and the first fit of the loaded pipeline
    # created <dir> and wrote joblib's cache into it.
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    record = {"class": "sklearn.pipeline:Pipeline", "attributes": {}, "estimator": {
        "memory": str(tmp_path / "chosen"), "steps": [["s", {"__estimator__": {
            "class": "sklearn.preprocessing._data:StandardScaler", "estimator": {}, "attributes": {}}}]]}}
    with pytest.raises(ValueError, match=r"cache.npz: .*memory='.*chosen': a file may not name a cache directory"):
        io.load(craft(tmp_path / "cache.npz", record))
    pipe = Pipeline([("s", StandardScaler())], memory=str(tmp_path / "mine"))
    with pytest.raises(ValueError, match="refusing to save a Pipeline with memory="):
        io.save(pipe, tmp_path / "p.npz")
    assert sorted(os.listdir(tmp_path)) == ["cache.npz"]
    pipe.memory = None
    assert io.load(io.save(pipe, tmp_path / "p.npz")).memory is None


def test_a_bytes_path_saves_and_loads(tmp_path):
    # save and load accept bytes paths (as open does); before, save failed with "Can't mix bytes and
    # non-bytes in path components" from building the temporary file's name
    path = os.fsencode(tmp_path / "model.npz")
    assert io.save(Linear(2, 3, seed=0), path) == path
    assert np.array_equal(io.load(path).params["W"], Linear(2, 3, seed=0).params["W"])
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]


def test_a_symbolic_link_at_the_target_is_replaced_and_what_it_pointed_to_is_untouched(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    victim = io.save(Linear(2, 2, seed=0), tmp_path / "elsewhere" / "victim.npz")
    before = victim.read_bytes()
    os.symlink(victim, tmp_path / "model.npz")
    io.save(Linear(2, 2, seed=1), tmp_path / "model.npz")
    assert not os.path.islink(tmp_path / "model.npz") and victim.read_bytes() == before
    assert np.array_equal(io.load(tmp_path / "model.npz").params["W"], Linear(2, 2, seed=1).params["W"])


# ----- 3. diverging fits ----------------------------------------------------------------------------
def standard_data(task, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((90, 3))
    y = np.arange(90) % 3 if task == "classification" else X[:, 0] - 0.5 * X[:, 1]
    return X, y


# name: (constructor, task, input scale). The competitive classifier's update is bounded (|dV| <= lr |x~|,
# its errors are probabilities), so on standardised inputs even lr = 1e300 saturates without overflowing
# and its loss does not grow: it is made to diverge by inputs of size 1e160 (logits overflow) instead.
ESTIMATORS = {
    "MoEClassifier": (lambda **kw: MoEClassifier(optimizer="sgd", epochs=20, random_state=0, **kw),
                      "classification", 1.0),
    "MoERegressor": (lambda **kw: MoERegressor(optimizer="sgd", epochs=20, random_state=0, **kw), "regression", 1.0),
    "LocalExpertsClassifier": (lambda **kw: LocalExpertsClassifier(epochs=20, random_state=0, **kw),
                               "classification", 1e160),
    "LocalExpertsRegressor": (lambda **kw: LocalExpertsRegressor(epochs=20, random_state=0, **kw), "regression", 1.0),
}
BAD_RATES = [1e300, 1e6]


@pytest.mark.parametrize("lr", BAD_RATES)
@pytest.mark.parametrize("name", ESTIMATORS)
def test_a_diverging_fit_raises_and_leaves_the_estimator_unfitted(name, lr):
    make, task, scale = ESTIMATORS[name]
    X, y = standard_data(task)
    X = X * scale
    est = make(learning_rate=lr)
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match=r"training diverged at epoch \d+"):
        est.fit(X, y)
    with pytest.raises(NotFittedError):
        est.predict(X)


@pytest.mark.parametrize("lr", BAD_RATES)
@pytest.mark.parametrize("name", ESTIMATORS)
def test_a_failed_refit_keeps_the_fitted_model(name, lr):
    make, task, scale = ESTIMATORS[name]
    X, y = standard_data(task)
    est = make().fit(X, y)
    before, score = est.predict(X), est.score(X, y)
    weights = {k: p.copy() for k, p in est.model_.named_parameters()}
    est.set_params(learning_rate=lr)
    # fit starts a fresh optimiser at the bad rate; partial_fit keeps the fitted one (as scikit-learn's MLP
    # does), so it is made to diverge by inputs 1e150 times larger
    for refit in (lambda: est.fit(X * scale, y), lambda: est.partial_fit(X * 1e150, y)):
        with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match="left as it was before this call"):
            refit()
        np.testing.assert_array_equal(est.predict(X), before)
        assert est.score(X, y) == score
        assert all(np.array_equal(p, weights[k]) for k, p in est.model_.named_parameters())


def test_a_refit_that_fails_on_bad_input_keeps_the_fitted_model():
    X, y = standard_data("classification")
    est = MoEClassifier(epochs=5, random_state=0).fit(X, y)
    before = est.predict_proba(X)
    with pytest.raises(ValueError, match="y has 1 class"):
        est.fit(X[:, :2], np.full(90, 7))  # one class: refused after validate_data reset n_features_in_
    assert est.n_features_in_ == 3
    np.testing.assert_array_equal(est.predict_proba(X), before)


def test_local_experts_regressor_diverges_on_raw_inputs():
    """The scikit-learn checks' data that make the default LMS step diverge (see test_estimators)."""
    rng = np.random.default_rng(0)
    X = rng.normal(loc=100, size=(30, 2))
    est = LocalExpertsRegressor(random_state=0)
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match="standardise X"):
        est.fit(X, X[:, 0])
    with pytest.raises(NotFittedError):
        est.predict(X)


def test_the_classic_trainer_puts_back_the_last_good_epoch():
    X, y = standard_data("regression")
    model = LocalExperts(3, 1, 2, mode="competitive", task="regression", seed=0)
    start = {k: p.copy() for k, p in model.named_parameters()}
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match="put back as they were at the start"):
        fit_local_experts(model, X, y, optimizer=SGD(1e300), epochs=3, batch_size=8, seed=0)
    assert all(np.array_equal(p, start[k]) for k, p in model.named_parameters())


# ----- 4. bad arguments: errors that name the argument ---------------------------------------------
def _backward_first():
    MoE(3, 2, 2, seed=0, top_k=1).backward(np.zeros((4, 2)))


def _diagnostics_first():
    return MoE(3, 2, 2, seed=0).diagnostics


def _wrong_dy():
    moe = MoE(3, 2, 2, seed=0, top_k=1)
    moe.forward(np.zeros((4, 3)))
    moe.backward(np.zeros((4, 3)))


ARGUMENTS = {
    "capacity_factor=inf": (lambda: MoE(3, 2, 2, top_k=1, capacity_factor=float("inf")), ValueError,
                            "capacity_factor=inf must be a finite number > 0"),
    "capacity_factor='1'": (lambda: MoE(3, 2, 2, top_k=1, capacity_factor="1"), TypeError,
                            "capacity_factor='1' must be a finite number > 0, not a str"),
    "Adam('0.1')": (lambda: Adam("0.1"), TypeError, "lr='0.1' must be a finite number > 0, not a str"),
    "Adam(lr=inf)": (lambda: Adam(float("inf")), ValueError, "lr=inf must be a finite number > 0"),
    "estimator learning_rate='0.1'": (lambda: MoEClassifier(learning_rate="0.1").fit(*standard_data("classification")),
                                      TypeError, "learning_rate='0.1' must be a finite number > 0"),
    "backward before forward": (_backward_first, RuntimeError, r"MoE.backward called before forward"),
    "diagnostics before forward": (_diagnostics_first, ValueError, "diagnostics needs a forward pass first"),
    "dy of the wrong shape": (_wrong_dy, ValueError, r"dy has shape \(4, 3\); expected \(4, 2\)"),
    "a SciPy sparse x": (lambda: MoE(3, 2, 2).forward(scipy.sparse.csr_matrix(np.ones((4, 3)))), TypeError,
                         r"x is a sparse matrix \(csr_matrix\).*x.toarray\(\)"),
    "float32 overflow": (lambda: MoE(3, 2, 2, dtype="float32").forward(np.full((2, 3), 1e39)), ValueError,
                         "x has values up to 1e\\+39 that overflow the layer's dtype float32"),
    "seed='abc'": (lambda: MoE(3, 2, 2, seed="abc"), TypeError, "seed='abc' must be None, an int >= 0"),
    "seed=-1": (lambda: Linear(3, 2, seed=-1), ValueError, "seed=-1 must be None, an int >= 0"),
    "balance without top_k": (lambda: MoEClassifier(balance="importance").fit(*standard_data("classification")),
                              ValueError, "balance='importance' and noise=None need a sparse gate: pass top_k=K"),
    "io.load of a directory": (lambda: io.load(ROOT), ValueError, "is a directory, not a numpy-moe file"),
    # before: "BaseEstimator.get_params() missing 1 required positional argument: 'self'"
    "io.save of an estimator class": (lambda: io.save(MoEClassifier, os.devnull), TypeError,
                                      r"cannot save the class MoEClassifier: pass an instance"),
}


@pytest.mark.parametrize("probe", ARGUMENTS)
def test_bad_arguments_name_the_argument(probe):
    call, error, message = ARGUMENTS[probe]
    with pytest.raises(error, match=message):
        call()


def test_a_misspelt_backend_variable_is_named():
    env = dict(os.environ, NUMPY_MOE_BACKEND="CuPy")
    out = subprocess.run([sys.executable, "-c", "import numpy_moe.backend"], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=120)
    assert out.returncode != 0
    assert "the environment variable NUMPY_MOE_BACKEND='CuPy' must be one of ('numpy', 'cupy')" in out.stderr


# ----- fuzzing: any mutation of a valid record is a ValueError or a valid model, nothing else --------------
_ODD_VALUES = [None, True, -1, 0, 2 ** 70, 1e308, float("nan"), "", "x", [], [1], {}, {"__class__": 1},
               {"__array__": "model_/gate.W"}, {"__tuple__": [1]}, {"__module__": {"class": "numpy_moe.layers:ReLU",
                                                                                   "config": {}}}]


def _paths(value, path=()):
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, path + (i,))


def _mutated(record, path, new):
    record = json.loads(json.dumps(record))
    if not path:
        return new
    target = record
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return record


def test_random_mutations_of_a_fitted_pipeline_file_give_value_errors_only(tmp_path):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    X, y = standard_data("classification")
    pipe = make_pipeline(StandardScaler(), MoEClassifier(top_k=2, epochs=2, random_state=0)).fit(X, y)
    path = io.save(pipe, tmp_path / "pipe.npz")
    with np.load(path) as npz:
        arrays = dict(npz)
    record = json.loads(str(arrays.pop("__meta__")))["object"]
    paths = list(_paths(record))
    rng = np.random.default_rng(0)
    outcomes = {"ValueError": 0, "loaded": 0}
    for _ in range(300):
        p = paths[rng.integers(len(paths))]
        new = _ODD_VALUES[rng.integers(len(_ODD_VALUES))]
        mutated = craft(tmp_path / "m.npz", _mutated(record, p, new), arrays)
        try:
            io.load(mutated)
            outcomes["loaded"] += 1
        except ValueError:
            outcomes["ValueError"] += 1
    assert outcomes["ValueError"] > 100, outcomes  # most mutations break the file; none escapes as another error


@pytest.mark.parametrize("bad", [-1.0, 2.5, 99.0])
def test_a_tampered_hash_table_is_refused_and_load_into_leaves_the_model_as_it_was(bad, tmp_path):
    from numpy_moe.gates import HashGate
    path = io.save(MoE(gate=HashGate(3, 4, 6, seed=0), experts=MoE(3, 2, 4, seed=0).experts), tmp_path / "h.npz")
    with np.load(path) as npz:
        arrays = dict(npz)
    record = json.loads(str(arrays.pop("__meta__")))["object"]
    key = [k for k in arrays if k.endswith("table")][0]
    arrays[key] = arrays[key].copy()
    arrays[key][2] = bad
    evil = craft(tmp_path / "evil.npz", record, arrays)
    with pytest.raises(ValueError, match=r"evil.npz: HashGate table holds values that are not expert ids"):
        io.load(evil)
    target = io.load(path)
    before = {k: b.copy() for k, b in target.named_buffers()}
    with pytest.raises(ValueError, match="not expert ids"):
        io.load_into(target, evil)
    assert all(np.array_equal(b, before[k]) for k, b in target.named_buffers())
