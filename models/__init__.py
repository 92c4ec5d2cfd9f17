"""Pure learning code on torch and numpy; never imports Kafka or ``stream``."""
