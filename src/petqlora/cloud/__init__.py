"""Cloud: the edges to Google Cloud: Cloud Run Jobs, Vertex AI pipelines, schedules, models and lineage,
Cloud Storage, and the naming rules they share. Nothing else in the library imports a cloud client."""
