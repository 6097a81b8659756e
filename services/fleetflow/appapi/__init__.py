"""The application API: a fleet's stored data and devices served to the applications built on fleetflow.

Named `appapi`, not `api`, because `fleetflow.api` already is the typed models of the custom resources (the
single source of truth every package imports); this is a service beside the gateway, processor and writer.
It reads the pipelines' stores through the writer's store interface (`fleetflow.writer.stores`) and nothing
else of the writer."""
