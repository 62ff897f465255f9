"""Fine-tuning with Hugging Face Trainer: timm classifiers and FDConv semantic-segmentation models.

Both tasks run the same flow (:mod:`.trainer_flow`: seed, overwrite guard, a checked first example,
Trainer with per-epoch checkpoints and resumption, evaluation, an atomically written model folder with a
card, a metrics table); :mod:`.classification` and :mod:`.segmentation` supply the model, data, transforms,
metrics and card.
"""

from .classification import FinetuneResult, finetune_classification
from .classification_data import load_image_classification_dataset
from .errors import FinetuneInputError
from .images import to_model_image
from .outputs import log_metrics_table
from .segmentation import SegmentationFinetuneResult, finetune_segmentation
from .segmentation_data import load_semantic_segmentation_dataset
from .segmentation_eval import SegmentationMetrics, confusion_matrix, segmentation_metrics
from .segmentation_masks import IGNORE_INDEX, mask_label_counts

__all__ = [
    "IGNORE_INDEX",
    "FinetuneInputError",
    "FinetuneResult",
    "SegmentationFinetuneResult",
    "SegmentationMetrics",
    "confusion_matrix",
    "finetune_classification",
    "finetune_segmentation",
    "load_image_classification_dataset",
    "load_semantic_segmentation_dataset",
    "log_metrics_table",
    "mask_label_counts",
    "segmentation_metrics",
    "to_model_image",
]
