"""Running a detector over data: evaluation with the MVTec metrics, prediction to files,
heatmap images."""
