"""The seed's scenario (train components failing within the hour), offline checks."""
