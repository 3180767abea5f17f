"""Files copied into every benchmark folder (standalone: numpy and onnx only)."""
