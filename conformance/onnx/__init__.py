"""ONNX: export each generated model, validate it, run it in ONNX Runtime and the reference evaluator."""
