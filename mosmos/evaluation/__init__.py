"""Scoring segmentations: Dice, HD95 and result tables (metrics), and a model on a labelled dataset split
(evaluate)."""
