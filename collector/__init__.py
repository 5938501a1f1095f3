"""The central billing endpoint: CloudEvents ingest with permanent deduplication, the query API
that `meter report --collector` uses, and the billing export (docs/collector-api.md)."""
