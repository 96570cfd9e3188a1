"""Export stage: the trained detector to ONNX / fp16 ONNX / torch.export programs, chip buckets,
TensorRT engines, and the deployable bundle (schema in runtime/bundle.py)."""
