"""Metrics: Y-channel PSNR/SSIM (ours) + pyiqa's learned/NR metrics, and folder evaluation."""

from common.metrics.fr import psnr_y, rgb_to_y, ssim_y
from common.metrics.learned import VARIANTS, MetricWeightsError, create_pyiqa_metric, niqe_params_mat
from common.metrics.stack import MetricStack, evaluate_folders

__all__ = [
    "psnr_y",
    "ssim_y",
    "rgb_to_y",
    "MetricStack",
    "evaluate_folders",
    "VARIANTS",
    "MetricWeightsError",
    "create_pyiqa_metric",
    "niqe_params_mat",
]
