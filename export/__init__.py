"""usnprune's export side: semantic-perturbation ONNX models, VNNLIB properties, benchmark folders."""
