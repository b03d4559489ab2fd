"""Stage 2, filter: raw pairs -> CLIP similarity of every pair (data/scores/) and the kept
pairs with their split (data/pairs/). `score` runs it; `keep_rules` turns similarities into
a cut. Imports only the ground floor (the filter CLIP is loaded through store.loaders)."""
