"""usnprune's pruning side: data, the perturbation model, keypoint networks, training, USN pruning."""

__version__ = "0.1.0"
