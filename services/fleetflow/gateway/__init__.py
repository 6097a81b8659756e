"""The device gateway: authenticates devices, validates their readings and publishes them to JetStream."""
