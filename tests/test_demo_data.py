"""The demo's shipped model and images: shapes, accuracy, and that loading is read-only."""

import hashlib
import subprocess
from pathlib import Path
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from qa import QAValueError  # noqa: E402
from qa.demo import (FP32_ACCURACY, PARAM_BW, Demo, calibrate, evaluate,  # noqa: E402
                     load_demo)
from qa.demo.model import DATA_DIR, WEIGHTS_FILE, build_model, load_weights  # noqa: E402

pytestmark = pytest.mark.torch

FP32_TARGET = 85.0  # Fashion-MNIST


@pytest.fixture(scope="module")
def demo() -> Demo:
    return load_demo()


def _fingerprints():
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(DATA_DIR.iterdir())}


def test_shapes_dtypes_and_labels(demo):
    assert not demo.model.training
    assert tuple(demo.dummy_input.shape) == (1, 1, 28, 28)
    assert demo.calibration.dtype == torch.float32 and tuple(demo.calibration.shape) == (500, 1, 28, 28)
    assert demo.eval_images.dtype == torch.float32 and tuple(demo.eval_images.shape) == (2000, 1, 28, 28)
    assert demo.eval_labels.dtype == torch.int64 and tuple(demo.eval_labels.shape) == (2000,)
    assert np.bincount(demo.eval_labels.numpy(), minlength=10).tolist() == [200] * 10
    assert torch.isfinite(demo.calibration).all() and torch.isfinite(demo.eval_images).all()
    # Normalized: roughly zero mean, unit spread over the shipped images.
    assert abs(float(demo.eval_images.mean())) < 0.2
    assert 0.8 < float(demo.eval_images.std()) < 1.2
    assert tuple(demo.model(demo.dummy_input).shape) == (1, 10)


def test_shipped_files_are_small_and_plain_arrays():
    total = 0
    for path in DATA_DIR.glob("*.npz"):
        total += path.stat().st_size
        with np.load(path, allow_pickle=False) as arrays:  # no pickled objects inside
            for key in arrays.files:
                expected = np.float32 if path == WEIGHTS_FILE else np.uint8
                assert arrays[key].dtype == expected, (path.name, key)
    assert WEIGHTS_FILE.stat().st_size < 1_000_000
    assert total < 2_000_000


def test_fp32_accuracy_of_shipped_weights(demo):
    acc = evaluate(demo.model, demo.eval_data)
    assert acc >= FP32_TARGET
    assert acc == pytest.approx(FP32_ACCURACY, abs=0.5)  # the number the docs quote


def test_calibrate_and_evaluate_leave_the_model_unchanged(demo):
    before = {k: v.clone() for k, v in demo.model.state_dict().items()}
    demo.model.train()
    calibrate(demo.model, demo.calibration)  # puts the model in eval mode: BN stats untouched
    evaluate(demo.model, demo.eval_data)
    assert not demo.model.training
    after = demo.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_unlabeled_batches(demo):
    batches = demo.unlabeled_batches(3, batch_size=32)
    assert [tuple(b.shape) for b in batches] == [(32, 1, 28, 28)] * 3
    assert len(list(batches)) == len(list(batches)) == 3  # can be iterated twice
    assert sum(len(b) for b in demo.unlabeled_batches(1000)) == 500


def test_loading_never_modifies_files():
    before = _fingerprints()
    demo = load_demo()
    calibrate(demo.model, demo.calibration[:64])
    evaluate(demo.model, (demo.eval_images[:64], demo.eval_labels[:64]))
    assert _fingerprints() == before


def test_wrong_weights_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "weights.npz"
    np.savez(bad, **{"conv1.weight": np.zeros((16, 1, 3, 3), np.float32)})
    with pytest.raises(QAValueError, match="weights.npz"):
        load_weights(build_model(), bad)


def test_weights_at_the_demo_bitwidth_show_a_culprit(demo):
    # What the demo is for: 4-bit per-tensor weights lose several points, mostly in one layer.
    from qa.demo.train import WEIGHT_LAYERS, fold_batch_norms, quantize_weights

    folded = fold_batch_norms(demo.model)
    fp32 = evaluate(folded, demo.eval_data)
    assert fp32 == pytest.approx(evaluate(demo.model, demo.eval_data), abs=0.1)
    all_low = evaluate(quantize_weights(folded, WEIGHT_LAYERS, PARAM_BW), demo.eval_data)
    dw_only = evaluate(quantize_weights(folded, ["dwconv"], PARAM_BW), demo.eval_data)
    assert fp32 - all_low > 5.0
    assert fp32 - dw_only > 0.5 * (fp32 - all_low)


def test_import_qa_does_not_import_torch():
    code = "import sys, qa, qa.kernels; assert 'torch' not in sys.modules and 'qa.demo' not in sys.modules"
    # Outside the checkout, so that the installed qa is imported (as users get it).
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).anchor)
