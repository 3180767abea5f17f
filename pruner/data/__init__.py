"""Keypoint datasets: the synthetic aircraft generator and the COCO-keypoints loader.

Every dataset, synthetic or real, is a COCO-keypoints folder on disk (docs/dataset.md) and
is read by one loader, so the rest of usnprune sees a single in-memory form,
:class:`~pruner.data.coco.KeypointDataset`.
"""
