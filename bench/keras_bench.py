"""Keras 3 on TensorFlow: generated vs keras.applications, `predict_on_batch` and a direct call
`model(x, training=False)`, in one process.

keras.applications is built as the porting code builds it (conformance/porting/keras_refs.py): logits
(classifier_activation=None) and, for V3, include_preprocessing=False. The generated models take
normalised input and have no Rescaling layer, so both sides compute the same function on the same input.
"""

from __future__ import annotations

from bench.pairs import factories
from bench.timing import settings_from, timed_row
from bench.worker import BenchError

MODES = ("predict_on_batch", "call")


def run(request: dict, progress) -> dict:
    if request["device"] != "cpu":
        raise BenchError("the Keras benchmark runs on CPU only (--gpu times PyTorch and Flax)")
    import tensorflow as tf

    threads = request["threads"]
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import keras
    import numpy as np

    from conformance.porting import keras_refs

    settings = settings_from(request)
    found, skipped = factories("keras", request["pairs"])
    rows = []
    for pair, factory in found:
        models = {"reference": keras_refs.build(pair.reference),
                  "generated": factory(num_classes=1000, flavor=pair.flavor, input_shape=(224, 224, 3))}
        params = {side: m.count_params() for side, m in models.items()}
        if len(set(params.values())) > 1:
            raise BenchError(f"{pair.label}: the two models differ in size ({params}); not the same network")
        for batch in request["batches"]:
            x = np.random.default_rng(batch).normal(size=(batch, 224, 224, 3)).astype(np.float32)
            x_tensor = tf.constant(x)
            for mode in MODES:
                progress(f"keras {pair.label}: {mode}, batch {batch}")
                if mode == "predict_on_batch":
                    fns = {side: (lambda m=m, x=x: m.predict_on_batch(x)) for side, m in models.items()}
                else:
                    fns = {side: (lambda m=m, x=x_tensor: m(x, training=False)) for side, m in models.items()}
                rows.append(timed_row(pair.label, mode, batch, fns, settings, reference=pair.reference.name,
                                      variant=pair.variant, flavor=pair.flavor, params=params["reference"]))
        keras.backend.clear_session()
    versions = {"tensorflow": tf.__version__, "keras": keras.__version__}
    setup = {"tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
             "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
             "keras_backend": keras.backend.backend()}
    return {"rows": rows, "skipped": skipped, "versions": versions, "setup": setup}
