"""Memoized sweeps on Keras models give bit-identical results to full evaluations, and really skip work.

Each case analyses one Keras 3 model (torch backend, CPU) twice, ``memoize=False`` and
``memoize=True``, with the same data and callbacks, and compares every score of both sweeps
exactly; the log line of each memoized sweep says how many layer calls were replayed instead of
computed.
"""

from __future__ import annotations

import itertools
import logging
import os
import re

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")

import qa  # noqa: E402

L = keras.layers
_folders = itertools.count()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions on a busy CPU run far faster on one torch thread (restored afterwards)."""
    if keras.backend.backend() != "torch":
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _floats(shape, n=2, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype("float32") for _ in range(n)]


def _call(m, b):
    return m(b)


def _run(model, batches, tmp_path, caplog, memoize, call=_call, **kwargs):
    """Analyse ``model`` (4-bit weights, 8-bit activations); the score is the mean squared error of
    the model's outputs against the float model's, so any differing bit shows."""
    references = [_np(call(model, b)).astype(np.float64) for b in batches]

    def score(m):
        return -float(sum(np.mean((_np(call(m, b)).astype(np.float64) - r) ** 2) for b, r in zip(batches, references)))

    def calibrate(m):
        for b in batches:
            call(m, b)

    analyzer = qa.QuantAnalyzer(model, None, calibrate, score, progress=False)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="qa"):
        result = analyzer.analyze("tf", default_param_bw=4, results_dir=tmp_path / f"run{next(_folders)}",
                                  memoize=memoize, **kwargs)
    return result, caplog.text


def _replayed(text):
    """(replayed, total, passes run again) summed over both sweeps, from the memo's log lines."""
    found = re.findall(r"memoized sweep: (\d+) of (\d+) calls replayed \(\d+%\), \d+ batch\(es\), [\d.]+ MiB "
                       r"remembered, (\d+) pass\(es\) run again in full", text)
    assert len(found) == 2, text
    return tuple(sum(int(f[i]) for f in found) for i in range(3))


def _same(a, b):
    """Two sweeps' scores, exactly; a MultiHeadAttention's softmax sublayer is renamed per clone
    (``mha/softmax_<n>``), so names are compared without that number."""
    def key(name):
        return re.sub(r"/softmax_\d+$", "/softmax", name)
    return [(key(k), v) for k, v in a.items()] == [(key(k), v) for k, v in b.items()]


# ---- the models ----------------------------------------------------------------------------------

def sequential_mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((10,)), L.Dense(16, activation="relu", name="fc1"),
                             L.Dense(16, activation="tanh", name="fc2"), L.Dropout(0.5, name="drop"),
                             L.Dense(8, activation="relu", name="fc3"), L.Dense(3, name="head")])


def residual_branches(seed=0):
    """Two residual blocks (the second one's conv object called twice: one kernel, two calls)."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((6, 6, 3))
    a = L.Conv2D(4, 3, padding="same", activation="relu", name="conv_a")(x)
    b = L.Conv2D(4, 3, padding="same", name="conv_b")(a)
    y = L.ReLU(name="relu1")(L.Add(name="add1")([a, b]))
    shared = L.Conv2D(4, 1, name="shared")
    c = shared(L.ReLU(name="relu2")(shared(y)))
    y = L.Add(name="add2")([y, c])
    y = L.GlobalAveragePooling2D(name="gap")(y)
    return keras.Model(x, L.Dense(5, name="head")(y))


def tied_variable(seed=0):
    """An embedding table read again by a keras.ops.einsum over the hidden states (a tied output
    projection), and a free constant matmul weight."""
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((5,), dtype="int32")
    emb = L.Embedding(12, 6, name="emb")
    h = L.Dense(6, activation="relu", name="fc1")(emb(tokens))
    h = L.Dense(6, name="fc2")(h)
    logits = keras.ops.einsum("btd,vd->btv", h, emb.embeddings)
    w = np.random.default_rng(seed).normal(size=(12, 4)).astype("float32")
    h = L.Dense(6, activation="relu", name="fc3")(keras.ops.matmul(logits, w))
    return keras.Model(tokens, L.Dense(3, name="head")(L.Dense(6, activation="relu", name="fc4")(h)))


def nested(seed=0):
    """A Functional block, a block called twice, a Sequential head, and a two-input block whose
    inputs are made outside it: everything flattened into the steps of one graph."""
    keras.utils.set_random_seed(seed)
    xi = keras.Input((6, 6, 3))
    y = L.Conv2D(3, 3, padding="same", use_bias=False, name="conv")(xi)
    block = keras.Model(xi, L.ReLU(name="relu")(L.BatchNormalization(name="bn")(y)), name="block")
    xt = keras.Input((6, 6, 3))
    twice = keras.Model(xt, L.Conv2D(3, 1, activation="relu", name="pw")(xt), name="twice")
    head = keras.Sequential([keras.Input((6, 6, 3)), L.Conv2D(4, 3, name="hconv"), L.GlobalAveragePooling2D(name="gap"),
                             L.Dense(6, name="fc")], name="head")
    ia, ib = keras.Input((6,)), keras.Input((8,))
    merged = L.Add(name="add")([L.Dense(8, name="proj")(ia), ib])
    pair = keras.Model([ia, ib], L.Dense(3, name="out")(L.ReLU(name="relu")(merged)), name="pair")
    x = keras.Input((6, 6, 3))
    h = head(twice(twice(block(x))))
    return keras.Model(x, pair([L.Dense(6, name="left")(h), L.Dense(8, name="right")(h)]))


def keras_ops(seed=0):
    """Layers and keras.ops calls mixed: add, matmul with a transpose, scaled softmax, reshape."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((4, 8))
    h = L.Dense(8, name="d1")(x)
    s = keras.ops.add(h, x)
    scores = keras.ops.matmul(s, keras.ops.transpose(s, (0, 2, 1)))
    probs = keras.ops.softmax(scores * 0.5)
    y = keras.ops.reshape(keras.ops.matmul(probs, s), (-1, 32))
    y = keras.ops.relu(L.Dense(8, name="d2")(y))
    return keras.Model(x, L.Dense(3, name="head")(y))


def attention_block(seed=0):
    """A transformer encoder block: MultiHeadAttention, residuals, layer norms, a feed-forward net."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((5, 8))
    h = L.Dense(8, name="embed")(x)
    a = L.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")(h, h)
    h = L.LayerNormalization(name="ln1")(L.Add(name="res1")([h, a]))
    f = L.Dense(8, name="ffn_out")(L.Dense(16, activation="gelu", name="ffn_in")(h))
    h = L.LayerNormalization(name="ln2")(L.Add(name="res2")([h, f]))
    return keras.Model(x, L.Dense(3, name="head")(L.GlobalAveragePooling1D(name="gap")(h)))


def masked(seed=0):
    """Padding masks travel on tensors (Embedding(mask_zero=True) -> ... -> pooling that reads them):
    a replayed tensor must carry its mask."""
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((6,), dtype="int32")
    h = L.Embedding(10, 8, mask_zero=True, name="emb")(tokens)
    h = L.Dense(8, activation="relu", name="fc1")(h)
    h = L.Dense(8, name="fc2")(h)
    return keras.Model(tokens, L.Dense(3, name="head")(L.GlobalAveragePooling1D(name="gap")(h)))


def _tokens(n=2, vocab=12, shape=(4, 5)):
    rng = np.random.default_rng(0)
    return [rng.integers(0, vocab, size=shape).astype("int32") for _ in range(n)]


def _padded():
    batches = _tokens(vocab=10, shape=(4, 6))
    for b in batches:
        b[:, 0] = np.maximum(b[:, 0], 1)
        b[1:, 3:] = 0  # padding
    return batches


CASES = {
    "sequential": (sequential_mlp, lambda: _floats((8, 10))),
    "residual_branches": (residual_branches, lambda: _floats((4, 6, 6, 3))),
    "tied_variable": (tied_variable, _tokens),
    "nested_models": (nested, lambda: _floats((3, 6, 6, 3))),
    "keras_ops": (keras_ops, lambda: _floats((4, 4, 8))),
    "multi_head_attention": (attention_block, lambda: _floats((2, 5, 8))),
    "padding_masks": (masked, _padded),
}


@pytest.mark.parametrize("case", list(CASES))
def test_memoized_sweeps_equal_full_sweeps(case, tmp_path, caplog):
    make, data = CASES[case]
    model, batches = make(), data()
    full, text = _run(model, batches, tmp_path, caplog, memoize=False)
    assert "memoized sweep" not in text
    memo, text = _run(model, batches, tmp_path, caplog, memoize=True)
    assert _same(memo.per_layer_quant_enabled, full.per_layer_quant_enabled)  # exactly, not approximately
    assert _same(memo.per_layer_quant_disabled, full.per_layer_quant_disabled)
    assert len(set(full.per_layer_quant_enabled.values())) > 1  # the layers do score differently
    replayed, total, again = _replayed(text)
    assert again == 0
    assert replayed > 0.15 * total, f"only {replayed} of {total} calls replayed"


def test_predict_batches_are_recognised_by_content(tmp_path, caplog):
    """``model.predict`` hands the model new tensors for each slice every time: the slices are
    recognised by their bytes, and replayed."""
    model, batches = residual_branches(), _floats((4, 6, 6, 3))

    def predict(m, b):
        return m.predict(b, batch_size=2, verbose=0)

    full, _ = _run(model, batches, tmp_path, caplog, memoize=False, call=predict)
    memo, text = _run(model, batches, tmp_path, caplog, memoize=True, call=predict)
    assert memo.per_layer_quant_enabled == full.per_layer_quant_enabled
    assert memo.per_layer_quant_disabled == full.per_layer_quant_disabled
    replayed, total, _ = _replayed(text)
    assert replayed > 0.15 * total
    assert re.search(r"calls replayed \(\d+%\), 4 batch\(es\)", text), text  # 2 batches, 2 slices each


def test_batches_never_seen_twice_run_in_full(tmp_path, caplog):
    """An eval loop with random augmentation: every evaluation sees new batches; nothing is replayed
    and the results still equal the plain path (the same seeds in both runs)."""
    model, batches = residual_branches(), _floats((4, 6, 6, 3))
    counter = {"n": 0}

    def fresh(m, b):
        counter["n"] += 1
        noise = np.random.default_rng(counter["n"]).normal(size=b.shape).astype("float32") * 0.01
        return m(b + noise)

    full, _ = _run(model, batches, tmp_path, caplog, memoize=False, call=fresh)
    counter["n"] = 0
    memo, text = _run(model, batches, tmp_path, caplog, memoize=True, call=fresh)
    assert memo.per_layer_quant_enabled == full.per_layer_quant_enabled
    assert memo.per_layer_quant_disabled == full.per_layer_quant_disabled
    replayed, total, _ = _replayed(text)
    assert replayed == 0 and total > 0


def test_a_zero_budget_remembers_nothing(tmp_path, caplog):
    model, batches = nested(), _floats((3, 6, 6, 3))
    full, _ = _run(model, batches, tmp_path, caplog, memoize=False)
    memo, text = _run(model, batches, tmp_path, caplog, memoize=True, memo_memory_budget=0)
    assert memo.per_layer_quant_enabled == full.per_layer_quant_enabled
    assert memo.per_layer_quant_disabled == full.per_layer_quant_disabled
    assert _replayed(text)[0] == 0
    assert "would exceed memo_memory_budget" in text
    assert "0.0 MiB remembered" in text


def test_a_small_budget_keeps_what_fits(tmp_path, caplog):
    """A budget that holds one conv output: the first batch remembers it (and replays the first
    conv), the second does not fit; neither fits the two tensors live at the next cut."""
    model, batches = residual_branches(), _floats((4, 6, 6, 3))
    full, _ = _run(model, batches, tmp_path, caplog, memoize=False)
    _, text = _run(model, batches, tmp_path, caplog, memoize=True)
    replayed_all = _replayed(text)[0]
    one_output = 4 * 6 * 6 * 4 * 4  # float32 [4, 6, 6, 4]
    memo, text = _run(model, batches, tmp_path, caplog, memoize=True, memo_memory_budget=one_output + 256)
    assert memo.per_layer_quant_enabled == full.per_layer_quant_enabled
    assert memo.per_layer_quant_disabled == full.per_layer_quant_disabled
    replayed = _replayed(text)[0]
    assert 0 < replayed < replayed_all
    assert "would exceed memo_memory_budget" in text


@keras.saving.register_keras_serializable(package="qa_memo_tests")
class Jitter(L.Layer):
    """Holds a seed generator: noise in training, none in inference (a layer qa cannot see into)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(1)

    def call(self, x, training=False):
        if training:
            return x + keras.random.normal(keras.ops.shape(x), stddev=0.1, seed=self.seed_generator)
        return x


def test_a_layer_that_may_draw_random_numbers_turns_memoization_off(tmp_path, caplog):
    keras.utils.set_random_seed(0)
    x = keras.Input((6,))
    y = L.Dense(3, name="head")(Jitter(name="jitter")(L.Dense(6, name="fc")(x)))
    model, batches = keras.Model(x, y), _floats((4, 6))
    full, _ = _run(model, batches, tmp_path, caplog, memoize=False)
    memo, text = _run(model, batches, tmp_path, caplog, memoize=True)
    assert memo.per_layer_quant_enabled == full.per_layer_quant_enabled
    assert memo.per_layer_quant_disabled == full.per_layer_quant_disabled
    assert "memoized sweeps are off for this model (layer jitter may draw random numbers in inference)" in text
    assert "calls replayed" not in text


def test_the_memo_is_left_behind_after_the_sweep():
    """Outside memoized(), the clone runs Keras's own graph runner; close() removes the patches."""
    from qa.adapters.keras import KerasAdapter

    model = nested()
    adapter = KerasAdapter(model)
    b = _floats((2, 6, 6, 3), 1)[0]
    want = _np(adapter.run(b))
    with adapter.memoized(1 << 20) as focus:
        assert focus is not None
        for _ in range(3):
            focus([])  # nothing differs: the whole pass is replayed after the first
            np.testing.assert_array_equal(_np(adapter.run(b)), want)
        memo = adapter._memo
        assert memo.saved == 2 * len(memo.plan.steps)
    assert adapter._memo is None
    np.testing.assert_array_equal(_np(adapter.run(b)), want)
    adapter.close()
    graphs = [adapter.model, adapter.model.get_layer("head")._functional, adapter.model.get_layer("twice")]
    assert all("_run_through_graph" not in vars(g) for g in graphs)


def test_a_replay_that_cannot_go_on_runs_again_in_full():
    """A replay that needs what it did not keep (here: the shape of a tensor handed to a nested
    model, forgotten on purpose) abandons the pass, which runs again in full, with the same result."""
    from qa.adapters.keras import KerasAdapter

    model = nested()
    adapter = KerasAdapter(model)
    b = _floats((2, 6, 6, 3), 1)[0]
    want = _np(adapter.run(b))
    with adapter.memoized(1 << 20) as focus:
        memo = adapter._memo
        focus(["pair/add_output_0"])  # the cut lies inside the nested model "pair"
        np.testing.assert_array_equal(_np(adapter.run(b)), want)
        np.testing.assert_array_equal(_np(adapter.run(b)), want)  # replayed: "left" handed over as a placeholder
        assert memo.abandoned == 0 and memo.saved > 0
        for batch in memo.batches.values():
            batch.metas.clear()
        np.testing.assert_array_equal(_np(adapter.run(b)), want)
        assert memo.abandoned == 1
        np.testing.assert_array_equal(_np(adapter.run(b)), want)  # the full pass recorded the shapes again
        assert memo.abandoned == 1
