"""What every fleetflow service shares: settings, JetStream, the codec, logging, telemetry, health, shutdown."""
