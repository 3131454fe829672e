"""ASSET — Active Separation via Offset (Pan et al., USENIX Security 2023), supervised setting.

Idea: one *offset* model is pulled two ways at once. It minimises a label-free loss on the
trusted reserve (the variance of its logits across classes, so clean images get flat logits)
and maximises cross-entropy on a part of the inspected set D that is rich in poison. On clean
samples of D the two pulls cancel; poison samples share a trigger that nothing in the reserve
counteracts, so their loss drifts far above the clean bulk. A threshold fitted to that bulk
flags them.

Each step of the offset loop (one pass over D in batches of 512 in the paper):

1. ``l_min``: one Adam step minimising the mean logit variance on a reserve batch.
2. Poison concentration: a fresh small MLP learns to tell the D batch (label 1) from the
   reserve batch (label 0) on *frozen* features of a model trained on D (binary cross-entropy).
3. Selection: the D samples whose MLP score is a high outlier by Adjusted Outlyingness
   (a skew-aware boxplot rule built on the medcouple) with AO > 2.
4. ``l_max``: one Adam step (its own optimizer state) maximising cross-entropy of the selected
   samples under their dataset labels.

Score: per-sample cross-entropy of the offset model. Threshold: see :func:`loss_threshold`.

Deviations from the reference demo, each documented and measured in ``docs/asset.md``: empty
selections skip the max step; the max step and the scoring use the reserve's batch-norm
statistics (eval mode) instead of statistics of poison-heavy batches; features are computed
once (the extractor is frozen) instead of on every MLP step; the MLP is trained with BCE (the
paper) rather than MSE (the demo); the AO rule is one-sided; the threshold is scale-free. The
``fast`` schedule also replaces the AO selection by a cross-fitted one, with reserve canaries
flooring the cut (:func:`select_poison_rich`; ``reference`` keeps the paper's rule). The opt-in
``selection="global"`` selects once from the whole set instead of once per batch
(:func:`global_picks`; measured, and why it is not the default, in ``docs/asset.md``).

Two kinds of input share the loop: image folders (:func:`image_inputs`: a CNN on normalised
pixels) and feature rows such as EMBER (:func:`feature_inputs`: the CT paper's EMBER MLP with one
output per class on standardised rows, labelled rows only). On rows the concentration MLP reads
the extractor's first hidden layer, selects at AO > 1, and reserve canaries set a floor for the
cut (:func:`with_canaries`; why and measured in ``docs/ember.md``). ``model_factory``/
``preprocess``/``augment`` replace the defaults for other models or inputs.

The package, one concern per module: :mod:`.schedules` (the reference demo's constants and ours),
:mod:`.selection` (poison concentration and the AO / cross-fitted / global selections),
:mod:`.offset` (the min/max loop), :mod:`.threshold` (the loss cut and the class test),
:mod:`.inputs` (images and feature rows, the frozen extractor), :mod:`.detector` (the estimator).
"""

from __future__ import annotations

from .detector import (
    ASSET,
    asset,
)
from .inputs import (
    Inputs,
    Samples,
    TrainModeMap,
    extractor_inputs,
    extractor_spec,
    feature_inputs,
    first_block,
    image_backbone,
    image_inputs,
    penultimate,
    with_canaries,
)
from .offset import (
    OffsetLog,
    batch_norm_without_update,
    batch_picks,
    frozen_norm_stats,
    global_picks,
    logit_variance,
    max_step_norm,
    offset_loop,
    per_sample_loss,
)
from .schedules import (
    FAST,
    FEATURE_FAST,
    FEATURE_REFERENCE,
    FEATURE_SCHEDULES,
    REFERENCE,
    SCHEDULES,
    SELECTIONS,
    AssetSchedule,
    get_schedule,
)
from .selection import (
    adjusted_outlyingness,
    concentration_mlp,
    concentration_scores,
    crossfit_scores,
    crossfit_selection,
    global_crossfit_scores,
    global_selection,
    select_outliers,
    select_poison_rich,
)
from .threshold import (
    canary_p_values,
    class_log_loss_medians,
    demo_threshold,
    level_set_z,
    loss_threshold,
    own_canary_p_values,
    robust_z,
    suspected_from_flags,
)

__all__ = [
    "ASSET", "AssetSchedule", "FAST", "FEATURE_FAST", "FEATURE_REFERENCE", "FEATURE_SCHEDULES", "Inputs",
    "OffsetLog", "REFERENCE", "SCHEDULES", "SELECTIONS", "Samples", "TrainModeMap", "adjusted_outlyingness",
    "asset", "batch_norm_without_update", "batch_picks", "canary_p_values", "class_log_loss_medians",
    "concentration_mlp", "concentration_scores", "crossfit_scores", "crossfit_selection", "demo_threshold",
    "extractor_inputs", "extractor_spec", "feature_inputs", "first_block", "frozen_norm_stats",
    "get_schedule", "global_crossfit_scores", "global_picks", "global_selection", "image_backbone",
    "image_inputs", "level_set_z", "logit_variance", "loss_threshold", "max_step_norm", "offset_loop",
    "own_canary_p_values", "penultimate", "per_sample_loss", "robust_z", "select_outliers",
    "select_poison_rich", "suspected_from_flags", "with_canaries",
]
