"""Numbers that judge a model: statistics (:mod:`.stats`), distances between samples
(:mod:`.distances`) and out-of-distribution scores (:mod:`.ood`)."""
