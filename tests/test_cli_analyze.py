"""`qa analyze MODEL --data D`: a model file (ONNX, Keras, torch.export) analysed on an image folder,
.npy/.npz data or random data with no code; label-free scores unless labels are given; every bad
flag is one line on stderr with exit status 2, found before the model loads where it can be."""

import doctest
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
Image = pytest.importorskip("PIL.Image")

from qa import data as qa_data  # noqa: E402
from qa import metrics as qa_metrics  # noqa: E402
from qa.cli import main  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def _cnn(out_channels=None):
    """A small CNN classifier (5 classes), or with ``out_channels`` a conv-only net (a [N, C, H, W] output)."""
    torch.manual_seed(0)
    layers = [torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
              torch.nn.Conv2d(8, out_channels or 8, 3, padding=1)]
    if out_channels is None:
        layers += [torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5)]
    net = torch.nn.Sequential(*layers).eval()
    with torch.no_grad():  # batch norm statistics that are not the identity
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net


def _export_onnx(net, path):
    torch.onnx.export(net, (torch.randn(2, 3, 16, 16),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["output"], dynamic_axes={"input": {0: "batch"}})
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The models, an image folder with labels that are the FP32 model's own predictions, .npz data."""
    root = tmp_path_factory.mktemp("analyze")
    net = _cnn()
    f = {"net": net, "root": root}
    f["onnx"] = _export_onnx(net, root / "cnn.onnx")
    f["seg_onnx"] = _export_onnx(_cnn(out_channels=4), root / "seg.onnx")
    program = torch.export.export(net, (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(root / "cnn.pt2"))
    f["pt2"] = root / "cnn.pt2"

    # images: RGB at the model's size, one grayscale and one RGBA; what the model must see for each
    rng = np.random.default_rng(0)
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    expected = {}
    for i in range(9):
        rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        name = f"img{i}.png" if i < 6 else f"sub/img{i}.png"
        Image.fromarray(rgb).save(images / name)
        expected[name] = rgb
    gray = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    Image.fromarray(gray, "L").save(images / "gray.png")
    expected["gray.png"] = np.stack([gray] * 3, axis=-1)  # grayscale -> RGB: three equal channels
    rgba = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(images / "rgba.png")
    expected["rgba.png"] = rgba[:, :, :3]  # RGBA -> RGB: alpha dropped
    (images / "notes.txt").write_text("not an image")
    inputs = np.stack([((expected[n] / np.float32(255) - MEAN) / STD).transpose(2, 0, 1) for n in sorted(expected)])
    with torch.no_grad():
        predicted = net(torch.from_numpy(inputs.astype(np.float32))).argmax(1).numpy()
    f["images"], f["expected"] = images, expected
    f["image_labels"] = root / "labels.csv"
    f["image_labels"].write_text("file,class\n" + "".join(f"{n},{c}\n" for n, c in zip(sorted(expected), predicted)))

    x = rng.standard_normal((24, 3, 16, 16)).astype(np.float32)
    np.savez(root / "nchw.npz", input=x)
    f["npz"] = root / "nchw.npz"
    np.savez(root / "small.npz", input=x[:, :, :8, :8])
    f["small_npz"] = root / "small.npz"
    return f


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    keras = pytest.importorskip("keras")
    root = tmp_path_factory.mktemp("keras")
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3), name="img")
    x = keras.layers.Conv2D(8, 3, padding="same")(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(5)(x))
    model.save(root / "cnn.keras")
    data = np.random.default_rng(1).standard_normal((24, 16, 16, 3)).astype(np.float32)
    np.savez(root / "nhwc.npz", img=data, unused=np.zeros(3))
    labels = np.argmax(keras.ops.convert_to_numpy(model(data, training=False)), axis=1)
    np.save(root / "labels.npy", labels)
    return {"model": root / "cnn.keras", "npz": root / "nhwc.npz", "labels": root / "labels.npy", "root": root}


def _run(capsys, *args):
    """main([...]) -> (exit status, stdout, stderr); argparse's errors exit through SystemExit."""
    try:
        code = main(["analyze", *map(str, args), "--no-progress"])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def _summary(folder):
    return json.loads((Path(folder) / "summary.json").read_text())


def _ok(code, out, err):
    assert code == 0, (out, err)
    assert "Traceback" not in err


# -- successful runs --

def test_onnx_on_an_image_folder_is_label_free_agreement(files, tmp_path, capsys):
    res = tmp_path / "res"
    code, out, err = _run(capsys, files["onnx"], "--data", files["images"], "--batch-size", "4", "--calibration", "1",
                          "--mse-batches", "1", "--results", res)
    _ok(code, out, err)
    assert "on 11 images from" in out  # 9 RGB (subfolder too), grayscale and RGBA; notes.txt is no image
    assert "batches of 4: 1 for calibration, 2 for evaluation" in out
    assert "top-1 agreement with the FP32 model's predictions (label-free" in out
    s = _summary(res)
    assert s["score"] == {"kind": "agreement", "unit": "%", "label_free": True,
                          "description": "top-1 agreement with the FP32 model's predictions (label-free; higher is "
                                         "better)"}
    assert s["fp32_score"] == 100.0  # the FP32 model agrees with itself
    assert all(0.0 <= s[k] <= 100.0 for k in ("weight_quantized_score", "activation_quantized_score",
                                              "quantized_score"))
    assert s["per_layer_mse"] and s["per_layer_quant_enabled"]
    for name in ("index.html", "per_layer_quant_enabled.json", "per_layer_quant_disabled.json", "analyze.json"):
        assert (res / name).is_file(), name
    assert f"results ({len(s['files'])} files) in {res}" in out
    assert main(["report", str(res)]) == 0  # the keys qa analyze adds to summary.json pass the schema


def test_image_labels_make_the_score_accuracy_and_preprocessing_matches(files, tmp_path, capsys):
    """The labels are the FP32 torch model's predictions on the images as the test prepares them
    (ImageNet mean/std, NCHW, grayscale and RGBA converted to RGB): FP32 accuracy 100 % proves
    that qa analyze read, converted, normalized and ordered the images the same way."""
    res = tmp_path / "res"
    code, out, err = _run(capsys, files["onnx"], "--data", files["images"], "--labels", files["image_labels"],
                          "--batch-size", "4", "--calibration", "1", "--mse-batches", "0", "--results", res)
    _ok(code, out, err)
    assert "top-1 accuracy against the labels (labelled" in out and "label-free" not in out
    s = _summary(res)
    assert s["score"]["kind"] == "accuracy" and s["score"]["label_free"] is False
    assert s["fp32_score"] == 100.0
    assert not s["per_layer_mse"]  # --mse-batches 0


def test_keras_on_npz_data_agreement_then_accuracy(keras_files, tmp_path, capsys):
    res = tmp_path / "res"
    code, out, err = _run(capsys, keras_files["model"], "--data", keras_files["npz"], "--batch-size", "8",
                          "--calibration", "1", "--mse-batches", "1", "--results", res)
    _ok(code, out, err)
    assert "(Keras, " in out and "24 samples from" in out and "arrays not used: unused" in out
    s = _summary(res)
    assert s["score"]["kind"] == "agreement" and s["fp32_score"] == 100.0
    assert s["data"]["framework"] == "keras"
    code, out, err = _run(capsys, keras_files["model"], "--data", keras_files["npz"], "--labels",
                          keras_files["labels"], "--batch-size", "8", "--calibration", "1", "--mse-batches", "0",
                          "--results", res)
    _ok(code, out, err)
    s = _summary(res)
    assert s["score"]["kind"] == "accuracy" and s["fp32_score"] == 100.0  # labels = the FP32 predictions


def test_keras_on_an_image_folder_reads_the_layout_from_the_model(keras_files, files, tmp_path, capsys):
    res = tmp_path / "res"
    code, out, err = _run(capsys, keras_files["model"], "--data", files["images"], "--limit", "8",
                          "--batch-size", "4", "--calibration", "1", "--mse-batches", "0", "--metric", "cosine",
                          "--results", res)
    _ok(code, out, err)  # [None, 16, 16, 3]: channels last, without --layout
    s = _summary(res)
    assert s["score"]["kind"] == "cosine" and s["fp32_score"] == pytest.approx(1.0)
    assert "8 images from" in out


def test_torch_export_with_random_data_and_a_symbolic_batch(files, tmp_path, capsys):
    res = tmp_path / "res"
    code, out, err = _run(capsys, files["pt2"], "--random", "--shape", "input=4,3,16,16", "--calibration", "1",
                          "--limit", "8", "--mse-batches", "1", "--results", res)
    _ok(code, out, err)
    assert "PyTorch (torch.export)" in out and "8 random samples (seed 0)" in out
    assert "batches of 4: 1 for calibration, 1 for evaluation" in out
    s = _summary(res)
    assert s["score"]["kind"] == "agreement" and s["score"]["label_free"] is True
    assert s["data"]["framework"] == "torch" and s["fp32_score"] == 100.0
    assert any(layer["op_type"].startswith("Conv") for layer in s["layers"])


def test_a_non_classifier_is_scored_by_output_sqnr(files, tmp_path, capsys):
    res = tmp_path / "res"
    code, out, err = _run(capsys, files["seg_onnx"], "--data", files["npz"], "--batch-size", "8", "--calibration",
                          "1", "--mse-batches", "0", "--param-bw", "4", "--per-channel", "--results", res)
    _ok(code, out, err)
    assert "weights 4 bit, activations 8 bit, scheme tf_enhanced, per-channel weights" in out
    s = _summary(res)
    ranges = s["weight_ranges"]
    assert ranges and all(isinstance(v, dict) and len(v) > 1 for v in ranges.values())  # per channel
    assert s["score"]["kind"] == "sqnr" and s["score"]["unit"] == "dB"
    assert s["fp32_score"] == qa_metrics.SQNR_CEILING_DB  # identical outputs
    assert 0 < s["quantized_score"] < s["activation_quantized_score"] < qa_metrics.SQNR_CEILING_DB  # 4-bit weights
    assert "output SQNR against the FP32 model's outputs (label-free" in out


def test_aimet_compat_and_aimet_config_names(files, tmp_path, capsys):
    """--aimet-compat gives AIMET's numbers (summary says so; the MSE lists every layer), --config takes
    AIMET's names, and --per-channel applies on top of a name."""
    res, plain = tmp_path / "res", tmp_path / "plain"
    args = [files["seg_onnx"], "--data", files["npz"], "--batch-size", "8", "--calibration", "1", "--mse-batches", "1"]
    _ok(*_run(capsys, *args, "--config", "htp_v73", "--aimet-compat", "--results", res))
    _ok(*_run(capsys, *args, "--config", "per_tensor", "--per-channel", "--results", plain))
    compat, qa_run = _summary(res), _summary(plain)
    assert compat["aimet_compat"] is True and qa_run["aimet_compat"] is False
    assert set(compat["per_layer_mse"]) == {layer["name"] for layer in compat["layers"]}  # every layer, as AIMET
    assert all(isinstance(v, dict) and len(v) > 1 for v in qa_run["weight_ranges"].values())  # per channel
    line = _error(capsys, files["seg_onnx"], "--data", files["npz"], "--config", "htp_v99")
    assert "htp_v73" in line, line  # the names are listed


def test_recommend_measures_fixes_and_writes_the_plan(files, tmp_path, capsys):
    res = tmp_path / "res"
    code, out, err = _run(capsys, files["seg_onnx"], "--data", files["npz"], "--batch-size", "8", "--calibration",
                          "1", "--mse-batches", "0", "--param-bw", "4", "--recommend", "--target", "abs=1000",
                          "--results", res)
    _ok(code, out, err)
    s = _summary(res)
    assert s["recommendation"] is not None
    assert {"recommendation.json", "recommended_config.json"} <= set(s["files"])
    for args, needle in ((["--target", "0.1"], "--target goes with --recommend"),
                         (["--workers", "2", "--executor", "local"], "--workers goes with --executor ray")):
        line = _error(capsys, files["seg_onnx"], "--data", files["npz"], *args)
        assert needle in line, line


def test_a_rerun_resumes_only_on_the_same_evaluation_data(files, tmp_path, capsys):
    res = tmp_path / "res"
    args = [files["onnx"], "--data", files["npz"], "--batch-size", "8", "--calibration", "1", "--mse-batches", "0",
            "--results", res]
    _ok(*_run(capsys, *args))
    first = _summary(res)
    _ok(*_run(capsys, *args))
    again = _summary(res)
    assert again["reused_evaluations"] > 0 and again["quantized_score"] == first["quantized_score"]
    _ok(*_run(capsys, *args, "--limit", "16"))  # same calibration batch, other evaluation data: no reuse
    assert _summary(res)["reused_evaluations"] == 0
    _ok(*_run(capsys, *args, "--no-resume"))
    assert _summary(res)["reused_evaluations"] == 0


def test_as_a_subprocess(files, tmp_path):
    res = tmp_path / "res"
    run = subprocess.run([sys.executable, "-m", "qa", "analyze", str(files["onnx"]), "--data", str(files["npz"]),
                          "--batch-size", "8", "--calibration", "1", "--mse-batches", "1", "--results", str(res)],
                         capture_output=True, text=True, timeout=300, cwd=Path(__file__).anchor)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr and "\r" not in run.stderr  # no progress bars off a terminal
    lines = run.stdout.splitlines()
    assert lines[0].startswith("qa analyze: cnn.onnx (ONNX, ") and "24 samples from" in lines[0]
    assert any(line.startswith("  fully quantized") and line.rstrip().endswith("%") for line in lines)
    assert lines[-1] == f"open {res / 'index.html'} in a browser (works offline)"
    assert _summary(res)["score"]["kind"] == "agreement"


# -- errors: one line, exit 2, nothing written --

@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if the model is loaded: these errors must come first."""
    def refuse(path):
        raise AssertionError("the model was loaded before the arguments were checked")
    monkeypatch.setattr(qa_data, "load_model_file", refuse)


def _error(capsys, *args, results=None):
    code, out, err = _run(capsys, *args, *(["--results", results] if results else []))
    assert code == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("qa analyze: "), err
    if results is not None:
        assert not Path(results).exists()
    return lines[0]


@pytest.mark.parametrize("make, args, needle", [
    (None, ["missing.onnx", "--random"], "missing.onnx: no such file"),
    ("model.tflite", ["model.tflite", "--random"], "unknown model file suffix '.tflite'; qa analyze reads .onnx"),
    ("folder/", ["folder", "--random"], "is a folder; qa analyze takes a model file"),
    (None, ["{onnx}", "--data", "empty"], "--data empty: no images in this folder"),
    (None, ["{onnx}", "--data", "nothing.npz"], "--data nothing.npz: no such file or folder"),
    ("data.csv", ["{onnx}", "--data", "data.csv"], "expected a folder of images, a .npy or a .npz file"),
    (None, ["{onnx}", "--data", "{npz}", "--mean", "0.5"], "--mean applies to image folders"),
    (None, ["{onnx}", "--random", "--labels", "{labels}"], "--labels needs real data"),
    (None, ["{onnx}", "--data", "{images}", "--metric", "accuracy"], "--metric accuracy needs --labels"),
    (None, ["{onnx}", "--data", "{images}", "--labels", "{labels}", "--metric", "sqnr"], "drop one of them"),
    (None, ["{onnx}", "--random", "--shape", "input=1,x"], "expected NAME=D0,D1,... with whole numbers"),
    (None, ["{onnx}", "--random", "--config", "none.json"], "quantsim config file 'none.json' not found"),
    ("file", ["{onnx}", "--random", "--results", "file/sub"], "--results file/sub: cannot create the folder, file is "
                                                              "a file"),
    ("file", ["{onnx}", "--random", "--results", "file"], "--results file is a file, not a folder"),
])
def test_errors_found_before_the_model_loads(files, tmp_path, capsys, monkeypatch, no_model_loading, make, args,
                                              needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no image here")
    if make:
        if make.endswith("/"):
            (tmp_path / make).mkdir()
        else:
            (tmp_path / make).write_text("x")
    args = [a.format(onnx=files["onnx"], npz=files["npz"], images=files["images"], labels=files["image_labels"])
            for a in args]
    line = _error(capsys, *args)
    assert needle in line, line
    assert not (tmp_path / "qa_results").exists()


@pytest.mark.parametrize("args, needle", [
    (["--mean", "a,b"], "argument --mean: expected numbers separated by commas, got 'a,b'"),
    (["--std", "0.2,0"], "argument --std: expected positive finite numbers"),
    (["--size", "0"], "argument --size: expected S or H,W in pixels (at least 1)"),
    (["--param-bw", "1"], "argument --param-bw: a bitwidth must be from 2 to 32, got 1"),
    (["--calibration", "0"], "argument --calibration: must be at least 1, got 0"),
    (["--percentile", "20"], "argument --percentile: must be from 50 to 100, got 20"),
    (["--memo-memory-budget", "lots"], "argument --memo-memory-budget: expected a size in bytes like 512MiB"),
    (["--random"], "argument --random: not allowed with argument --data"),
    (["--target", "lots"], "argument --target: expected a number such as 0.01 or abs=0.5"),
    (["--target", "x=0.1"], "argument --target: expected a number >= 0 such as 0.01 or abs=0.5"),
    (["--workers", "0"], "argument --workers: must be at least 1, got 0"),
    (["--executor", "dask"], "argument --executor: invalid choice"),
])
def test_flag_errors_are_argparse_one_liners(files, capsys, args, needle):
    line = _error(capsys, files["onnx"], "--data", files["images"], *args)
    assert needle in line, line
    assert line.endswith("(qa analyze -h for help)")


def test_no_data_is_an_error(files, capsys):
    assert "one of the arguments --data --random is required" in _error(capsys, files["onnx"])


def test_errors_found_once_the_model_is_read(files, tmp_path, capsys):
    res = tmp_path / "res"
    line = _error(capsys, files["onnx"], "--data", files["small_npz"], results=res)
    assert line == (f"qa analyze: --data {files['small_npz']}: array 'input' has samples of shape [3, 8, 8]; the "
                    f"model's input 'input' takes [batch, 3, 16, 16]")
    line = _error(capsys, files["onnx"], "--data", files["images"], "--mean", "0.5,0.5", results=res)
    assert line == "qa analyze: --mean has 2 values; the model's images have 3 channel(s): give 3 (or 1 for all)"
    line = _error(capsys, files["onnx"], "--random", results=res)
    assert line == ("qa analyze: --random: the model's input 'input' [batch, 3, 16, 16] has symbolic dim 0 (batch); "
                    "give its shape with --shape input=N,3,16,16 (N: a number)")
    line = _error(capsys, files["pt2"], "--random", results=res)
    assert "--random: the model's input 'input' [s" in line and "--shape input=N,3,16,16" in line
    line = _error(capsys, files["onnx"], "--random", "--shape", "input=2,3,8,8", results=res)
    assert "dim 2 of the model's input 'input' [batch, 3, 16, 16] is 16, not 8" in line
    line = _error(capsys, files["onnx"], "--random", "--shape", "x=2,3,16,16", results=res)
    assert "the model has no input 'x'; its inputs are ['input']" in line
    line = _error(capsys, files["onnx"], "--data", files["images"], "--size", "20", results=res)
    assert "--size 20,20 does not fit the model's input 'input' [batch, 3, 16, 16]" in line
    line = _error(capsys, files["seg_onnx"], "--data", files["npz"], "--metric", "agreement", results=res)
    assert "the agreement metric needs class scores" in line and "use --metric sqnr or cosine" in line
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    assert "bad.onnx" in _error(capsys, bad, "--random", results=res)


def test_a_subprocess_error_comes_before_torch_loads(files, tmp_path):
    (tmp_path / "empty").mkdir()
    probe = ("import sys\nfrom qa.cli import main\ncode = main(sys.argv[1:])\n"
             "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')\nsys.exit(code)\n")
    run = subprocess.run([sys.executable, "-c", probe, "analyze", str(files["pt2"]), "--data", str(tmp_path / "empty")],
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).anchor)
    assert run.returncode == 2 and run.stdout.strip() == "torch not loaded"
    assert run.stderr.count("\n") == 1 and "no images in this folder" in run.stderr


# -- the pieces --

def test_images_crop_or_stretch_and_convert_channels(tmp_path):
    """A 32x16 image with red, green and blue vertical bands: crop keeps the green center, stretch all three."""
    band = np.zeros((16, 32, 3), np.uint8)
    band[:, :8, 0] = 255
    band[:, 8:24, 1] = 255
    band[:, 24:, 2] = 255
    Image.fromarray(band).save(tmp_path / "bands.png")
    spec = qa_data.InputSpec("x", ("N", 16, 16, 3), np.dtype("float32"))
    plain = qa_data.ImageOptions(mean=(0.0,), std=(1.0,))
    crop = qa_data.load_images([tmp_path / "bands.png"], spec, plain)[0]
    assert crop.shape == (16, 16, 3)
    assert np.allclose(crop[..., 1], 1.0) and np.allclose(crop[..., [0, 2]], 0.0)
    stretch = qa_data.load_images([tmp_path / "bands.png"], spec, qa_data.ImageOptions(resize="stretch", mean=(0.0,),
                                                                                      std=(1.0,)))[0]
    assert stretch[:, 0, 0].min() > 0.9 and stretch[:, -1, 2].min() > 0.9 and stretch[:, 8, 1].min() > 0.9
    gray_model = qa_data.InputSpec("x", ("N", 1, 16, 16), np.dtype("float32"))
    luma = qa_data.load_images([tmp_path / "bands.png"], gray_model, plain)[0]
    assert luma.shape == (1, 16, 16)  # RGB -> one luma channel, channels first
    assert luma[0, 0, 10] == pytest.approx(round(255 * 0.587) / 255, abs=1 / 255)  # green's luma weight
    default = qa_data.load_images([tmp_path / "bands.png"], spec, qa_data.ImageOptions())[0]
    assert default[0, 10] == pytest.approx((np.array([0.0, 1.0, 0.0]) - MEAN) / STD, abs=1e-5)  # ImageNet default


def test_grayscale_and_rgba_images_feed_an_rgb_model(files):
    spec = qa_data.InputSpec("input", ("batch", 3, 16, 16), np.dtype("float32"))
    names = ["gray.png", "rgba.png", "img0.png"]
    got = qa_data.load_images([files["images"] / n for n in names], spec, qa_data.ImageOptions())
    want = np.stack([((files["expected"][n] / np.float32(255) - MEAN) / STD).transpose(2, 0, 1) for n in names])
    assert got.shape == (3, 3, 16, 16) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_layout_comes_from_the_model_or_is_asked_for():
    f32 = np.dtype("float32")
    assert qa_data.image_geometry(qa_data.InputSpec("x", ("N", 3, 8, 8), f32), qa_data.ImageOptions())[0] == "nchw"
    assert qa_data.image_geometry(qa_data.InputSpec("x", ("N", 8, 8, 1), f32), qa_data.ImageOptions())[0] == "nhwc"
    ambiguous = qa_data.InputSpec("x", ("N", 3, 4, 3), f32)
    with pytest.raises(qa_data.QAValueError, match="pass --layout nchw or --layout nhwc"):
        qa_data.image_geometry(ambiguous, qa_data.ImageOptions())
    assert qa_data.image_geometry(ambiguous, qa_data.ImageOptions(layout="nhwc")) == ("nhwc", 3, (3, 4))
    with pytest.raises(qa_data.QAValueError, match="does not fix the image size; pass --size"):
        qa_data.image_geometry(qa_data.InputSpec("x", ("N", 3, "h", "w"), f32), qa_data.ImageOptions())


def test_labels_and_shapes_parse():
    assert qa_data.parse_shape("ids=2,128") == ("ids", (2, 128))
    with pytest.raises(qa_data.QAValueError, match="at least 1"):
        qa_data.parse_shape("x=0,3")
    files = [Path("/d/a.png"), Path("/d/sub/b.png")]
    assert qa_data.labels_for(files, "/d", {"a.png": 1, "b.png": 2}, "l.csv").tolist() == [1, 2]
    with pytest.raises(qa_data.QAValueError, match="no label for image 'sub/b.png'"):
        qa_data.labels_for(files, "/d", {"a.png": 1}, "l.csv")


def test_scores():
    ref = [[np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])], [np.array([[0.0, 0.0, 5.0]])]]
    flipped = [[np.array([[1.0, 3.0, 0.0], [0.0, 2.0, 1.0]])], [np.array([[0.0, 0.0, 5.0]])]]
    assert qa_metrics.Scorer("agreement", ref)(iter(flipped)) == pytest.approx(200 / 3)
    assert qa_metrics.Scorer("accuracy", labels=[np.array([0, 2]), np.array([2])])(ref) == pytest.approx(200 / 3)
    noisy = [[r + 0.1 for r in batch] for batch in ref]
    signal = sum(float((r ** 2).sum()) for batch in ref for r in batch)
    expected = 10 * np.log10(signal / (0.01 * 9))
    assert qa_metrics.Scorer("sqnr", ref)(noisy) == pytest.approx(expected)
    assert qa_metrics.Scorer("sqnr", ref)(ref) == qa_metrics.SQNR_CEILING_DB
    assert qa_metrics.Scorer("cosine", ref)([[2 * r for r in b] for b in ref]) == pytest.approx(1.0)
    assert qa_metrics.Scorer("cosine", ref)([[-r for r in b] for b in ref]) == pytest.approx(-1.0)
    nan = [[np.full_like(r, np.nan) for r in b] for b in ref]
    assert np.isnan(qa_metrics.Scorer("sqnr", ref)(nan))  # a broken model is no high score
    with pytest.raises(qa_metrics.QAValueError, match="needs class scores"):
        qa_metrics.Scorer("agreement", [[np.zeros((2, 3, 4))]])


@pytest.mark.parametrize("module", [qa_data, qa_metrics])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
