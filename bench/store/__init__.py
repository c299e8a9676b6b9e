"""The MLflow layer: the store's layout and tags (``tracking``), a run's checkpoints in it
(``checkpoints``), a tracking server on PostgreSQL (``server``) and the UI (``ui``)."""
