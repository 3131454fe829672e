"""The passive baselines: detectors that read an ordinarily trained model after the fact.

Spectral Signatures (:mod:`.spectral`), Activation Clustering (:mod:`.activation_clustering`),
STRIP (:mod:`.strip`), SCAn (:mod:`.scan`) and SPECTRE (:mod:`.spectre`) share one trained model
per dataset and the run bookkeeping of :mod:`.base`. They are here to be compared with the
proactive detectors (``sanitize bench``); adaptive attacks are known to evade them
(docs/baselines.md). The registry in :mod:`sanitize.detectors` imports each on first use.
"""
