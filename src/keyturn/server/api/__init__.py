"""The REST API, one router per area."""
