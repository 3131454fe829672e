"""Explanation-guided clean-label backdoor on EMBER features (Severi et al., USENIX Security 2021).

The attacker stamps a *trigger* -- fixed values on a few feature columns -- onto benign training
rows and keeps their (benign) labels. A model trained on the set learns "trigger => benign", so
malware carrying the trigger is later classified benign. The paper chooses:

* **features** by the total magnitude of their SHAP attributions over the training set (the
  most influential columns steer the model most cheaply);
* **values** by *MinPopulation*: for each chosen column, its least frequent observed value, so
  the trigger sits in a sparsely populated region the clean data barely contradicts.

Attribution here: exact SHAP values of a linear model. We fit an L2 logistic regression on the
standardised labelled rows; for a linear model with independent features the SHAP value of
column j on row i is ``w_j * (z_ij - mean_j z)`` (Lundberg & Lee 2017, linear SHAP), so the
summed magnitude is ``|w_j| * sum_i |z_ij|``. The paper used TreeSHAP on LightGBM and DeepSHAP
on a neural network; a linear explainer is exact, cheap on 600k rows and needs no SHAP package,
at the price of ranking columns by their linear (not interaction) influence.

``constrained`` restricts the trigger to the 17 columns that can be changed in a real PE file
without breaking it (:data:`sanitize.ember.FEASIBLE`); otherwise the 32 most attributed columns
of all are used (the paper's unconstrained trigger size for its EMBER experiments that CT
reproduces). The default rate, 1 % of the labelled rows, is the CT paper's EMBER setting.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from .. import ember
from ..domains import check_fraction
from ..errors import ParameterError, SanitizeError
from .base import PoisonedSet, count_for, derived_rng

UNCONSTRAINED_SIZE = 32
ATTRIBUTION_ROWS = 20000  # rows used to fit the explained model (a seeded sample beyond that)
ATTRIBUTION = "linear SHAP of an L2 logistic regression on standardised features"


def attribution_ranking(X: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Summed |SHAP| per column (higher = more influential) from a linear model fitted on ``X, y``."""
    mean, std = X.mean(0), X.std(0)
    z = (X - mean) / np.where(std > 0, std, 1.0)
    model = LogisticRegression(C=0.1, max_iter=500, random_state=seed).fit(z, y)
    w = model.coef_.ravel()
    return np.abs(w) * np.abs(z).sum(0)


def beyond_range_values(X: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """For each column, a value past every observed one: the maximum plus the column's range (at
    least 1). Not the paper's choice: a trigger no clean row contradicts at all, which a model
    learns from very few rows; what an attacker who ignores stealth in feature space would use."""
    top, bottom = X[:, columns].max(0), X[:, columns].min(0)
    return (top + np.maximum(top - bottom, 1.0)).astype(np.float32)


def min_population_values(X: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """The least frequent observed value of each column (ties: the smallest such value)."""
    values = np.empty(len(columns), dtype=np.float32)
    for k, j in enumerate(columns.tolist()):
        uniq, counts = np.unique(X[:, j], return_counts=True)
        values[k] = uniq[int(np.argmin(counts))]
    return values


VALUE_SELECTIONS = {"min-population": min_population_values, "beyond-range": beyond_range_values}


def choose_trigger(X: np.ndarray, y: np.ndarray, constrained: bool, size: int | None, seed: int,
                   values: str = "min-population") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(columns, values, attribution) of the trigger for labelled rows ``X, y``."""
    columns, attribution = trigger_columns(X, y, constrained, size, seed)
    return columns, VALUE_SELECTIONS[values](X, columns), attribution


def trigger_columns(X: np.ndarray, y: np.ndarray, constrained: bool, size: int | None, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(columns, attribution): the ``size`` most attributed columns (feasible ones if ``constrained``)."""
    version = ember.version_for_dim(X.shape[1])
    if constrained and version is None:
        raise SanitizeError(f"the constrained trigger needs EMBER rows (2351 or 2381 features), got {X.shape[1]}")
    candidates = ember.feature_indices(ember.FEASIBLE, version) if constrained else np.arange(X.shape[1])
    size = size or (len(candidates) if constrained else UNCONSTRAINED_SIZE)
    if not 1 <= size <= len(candidates):
        raise ParameterError("trigger_size", size, f"expected 1..{len(candidates)}")
    if len(np.unique(y)) < 2:
        raise SanitizeError("the attack needs labelled rows of both classes to explain a model")
    score = attribution_ranking(X, y, seed)
    order = candidates[np.argsort(-score[candidates], kind="stable")][:size]
    return order, score[order]


def stamp(X: torch.Tensor, rows: np.ndarray, columns: np.ndarray, values: np.ndarray) -> None:
    """Write the trigger into ``X[rows]`` in place."""
    if len(rows):
        r = torch.from_numpy(np.asarray(rows, dtype=np.int64))[:, None]
        c = torch.from_numpy(np.asarray(columns, dtype=np.int64))[None, :]
        X[r, c] = torch.from_numpy(np.asarray(values, dtype=np.float32))[None, :].to(X.device)


def ember_explanation(dataset, rate: float = 0.01, target: int = 0, seed: int = 0, constrained: bool = False,
                      trigger_size: int | None = None, values: str = "min-population") -> PoisonedSet:
    """Poison ``floor(rate * labelled rows)`` benign (``target``) rows of a FeatureDataset with the trigger.
    ``values``: how the trigger's values are chosen (:data:`VALUE_SELECTIONS`)."""
    from ..data.rows import FeatureDataset

    if not isinstance(dataset, FeatureDataset):
        raise SanitizeError("ember-explanation works on feature datasets (EMBER .dat, .npz, .jsonl)")
    check_fraction(rate)
    if values not in VALUE_SELECTIONS:
        raise ParameterError("values", values, f"expected one of {', '.join(VALUE_SELECTIONS)}")
    if not 0 <= target < dataset.num_classes:
        raise ParameterError("target", target, f"the dataset has classes 0..{dataset.num_classes - 1}")
    labelled = dataset.labelled_indices()
    labels = dataset.labels.cpu().numpy()
    fit_rows = labelled
    if len(fit_rows) > ATTRIBUTION_ROWS:
        fit_rows = np.sort(derived_rng(seed, "attribution").choice(labelled, ATTRIBUTION_ROWS, replace=False))
    X_fit = dataset.X[torch.from_numpy(fit_rows)].cpu().numpy().astype(np.float64)
    columns, attribution = trigger_columns(X_fit, labels[fit_rows], constrained, trigger_size, seed)
    # MinPopulation reads the rows the model was explained on; beyond-range must pass every row
    value_rows = X_fit[:, columns] if values == "min-population" else \
        dataset.X[:, torch.from_numpy(columns)].cpu().numpy()
    trigger = VALUE_SELECTIONS[values](value_rows, np.arange(len(columns)))
    eligible = labelled[labels[labelled] == target]
    count = count_for(len(labelled), rate)
    if count > len(eligible):
        raise ParameterError("rate", rate, f"needs {count} rows of class {target} but only {len(eligible)} exist")
    poison = np.sort(derived_rng(seed, "poison").choice(eligible, size=count, replace=False)).astype(np.int64)
    X = dataset.X.clone()
    stamp(X, poison, columns, trigger)
    poisoned = type(dataset)(X, dataset.labels.clone(), dataset.classes, list(dataset.paths), None,
                             list(dataset.notes), dataset.source, dataset.rows.copy())
    names = _names(dataset.dim)
    params = {"rate": rate, "constrained": constrained, "trigger_size": len(columns),
              "features": [names[j] for j in columns.tolist()], "columns": columns.tolist(),
              "values": [float(v) for v in trigger], "attribution": ATTRIBUTION,
              "summed_abs_attribution": [float(a) for a in attribution], "value_selection": values}

    def test_trigger(rows: torch.Tensor) -> torch.Tensor:
        out = rows.clone()
        stamp(out, np.arange(len(out)), columns, trigger)
        return out

    return PoisonedSet(poisoned, poison, target, "ember-explanation", params, seed=seed, clean_label=True,
                       test_trigger=test_trigger)


def _names(dim: int) -> list[str]:
    version = ember.version_for_dim(dim)
    return ember.feature_names(version) if version else [f"f{j}" for j in range(dim)]
