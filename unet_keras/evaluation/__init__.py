"""The evaluation stage: ISBI 2012 scores, figures, reports, and choosing a model's
threshold on its validation images."""
