"""Work-queue jobs over datasets (the batch pattern): a registered transform applied to every
partition of a source dataset by a pool of workers, producing a derived dataset, exactly once
per partition. `mlmesh transform` drives it; `worker` is one member of the pool."""
