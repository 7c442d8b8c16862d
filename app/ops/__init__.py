"""The ops dashboard: pages (``/ops/``), the JSON API (``/v1/ops/``) and ``/metrics``."""
