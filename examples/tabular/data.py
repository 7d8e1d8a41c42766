"""The churn table's columns, shared by the generator, the uploader and the model."""

from __future__ import annotations

# Columns of "numeric" (float32 [6]), in order.
NUMERIC_COLUMNS = (
    "tenure_months",
    "monthly_charges",
    "support_calls_90d",
    "data_gb_month",
    "age",
    "late_payments_12m",
)
# Rough mean and standard deviation of each column under `generate`'s model,
# baked into the model so the exported SavedModel takes raw values.
NUMERIC_MEAN = (24.0, 65.0, 1.5, 12.0, 45.0, 0.8)
NUMERIC_STD = (22.0, 25.0, 1.5, 9.0, 14.0, 1.1)
NUM_REGIONS = 50

NUMERIC = "numeric"
REGION = "region"
LABEL = "churned"
