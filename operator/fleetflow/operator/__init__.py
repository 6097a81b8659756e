"""The fleetflow operator: kopf handlers (thin), pure builders of Kubernetes objects, and reconcile steps."""
