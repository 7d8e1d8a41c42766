"""trainer_svc: the job coordinator and the TensorFlow training workers.

One package, two roles chosen by the first argument:

    python -m trainer_svc coordinator --ingest-addr ... --ps-addrs ... --model-repo R --work-dir W
    python -m trainer_svc worker --coordinator-addr HOST:PORT --cache-dir C
"""
