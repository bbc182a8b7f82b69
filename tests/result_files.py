"""The result files an analysis must write, derived from its layers and quantizers (all frameworks)."""

from qa.report import sanitize


def expected_files(result):
    root = result.results_dir
    files = {"per_layer_quant_enabled.json", "per_layer_quant_disabled.json", "min_max_ranges/weights.json",
             "min_max_ranges/activations.json", "per_layer_mse_loss.json", "per_layer_local_mse_loss.json",
             "summary.json"}
    seen = set()  # a shared parameter (tied weights, a module called twice) has one file, in its first layer's folder
    for layer in result.layers:
        for q in layer["quantizers"]:
            if q in seen:
                continue
            seen.add(q)
            if q.endswith(("_weight", "_bias", "_weight_r")):
                files.add(f"weights_pdf/{sanitize(layer['name'])}/{q[len(layer['name']) + 1:]}.json")
            else:
                files.add(f"activations_pdf/{sanitize(q)}.json")
    return {root / f for f in files}
