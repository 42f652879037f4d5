"""Adapters onto existing RL engines (TRL, verl). They translate data; the math stays in estimators."""
