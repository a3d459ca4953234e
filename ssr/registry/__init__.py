"""MLflow Model Registry: register candidates, gate and promote them, serve them."""
