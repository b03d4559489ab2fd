"""Stage 4, evaluation: checkpoints -> metric rows, per-image rows, the sweep's report.

`sweep` plans and runs a grid of (model, guidance) points, `prompts` chooses what they are
drawn from, `point` samples and measures one point, `report` turns the rows into the
sweep's findings and `pareto` into its plot, `nightly` compares a night with the one before,
`fid_weights` fetches and loads the FID Inception weights.

Imports the ground floor, and one other stage where data really flows: `shapes.render`,
because held-out prompts are fresh built-in scenes rendered with a seed training never saw.
"""
