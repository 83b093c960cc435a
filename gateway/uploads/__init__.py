"""The upload protocols (form, tus, direct-to-S3) and what they share: ingest, the pending-upload
lifecycle, idempotency, type sniffing, the multipart parser, and the sweeper of what they leave."""
