"""The controller service: in-memory state over the store, the control loop, ingestion."""
