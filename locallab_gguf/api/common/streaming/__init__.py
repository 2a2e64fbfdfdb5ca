"""Engine events on their way to a client: timed and counted, as one body or as events."""
