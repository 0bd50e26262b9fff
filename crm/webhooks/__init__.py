"""Webhooks: signed provider deliveries stored raw, processed by jobs, replayed by admins."""
