"""BigQuery through google-cloud-bigquery: the research analytics store at scale."""
