"""Customer churn: a user's own tabular dataset and Keras model, trained by mlmesh.

- `generate`: writes a synthetic-but-realistic churn table to an .npz
- `upload`: creates the datasets in ingest_svc and appends the records
- `model`: `examples.tabular.model:build`, the model factory a job names
- `train`: submits the job to the coordinator and follows it to the end
"""
