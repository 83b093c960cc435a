"""What happens after an upload is stored: the worker, the pipeline (scan, describe, derive),
its sandbox and scanner, and webhook deliveries."""
