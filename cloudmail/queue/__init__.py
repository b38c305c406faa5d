"""The outbound queue: durable storage, retry schedule and delivery status notifications."""
