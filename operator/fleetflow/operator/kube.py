"""A small asyncio client of the Kubernetes API for the operator's children: create, get, JSON merge patch,
delete. Credentials come from the `kubernetes` package's configuration (kubeconfig or in-cluster)."""

import json
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from fleetflow.api import GROUP, VERSION

JsonObject = dict[str, Any]

# apiVersion/kind -> plural of every kind the operator reads or writes.
PLURALS = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Secret"): "secrets",
    ("v1", "Service"): "services",
    ("apps/v1", "Deployment"): "deployments",
    ("apps/v1", "StatefulSet"): "statefulsets",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("networking.k8s.io/v1", "Ingress"): "ingresses",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproutes",
    ("gateway.networking.k8s.io/v1", "GRPCRoute"): "grpcroutes",
    ("gateway.networking.k8s.io/v1", "Gateway"): "gateways",
    (f"{GROUP}/{VERSION}", "DeviceFleet"): "devicefleets",
    (f"{GROUP}/{VERSION}", "Pipeline"): "pipelines",
    ("coordination.k8s.io/v1", "Lease"): "leases",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaims",
    ("storage.k8s.io/v1", "StorageClass"): "storageclasses",
}
# Kinds without a namespace; their Ref carries namespace "".
CLUSTER_SCOPED = {("storage.k8s.io/v1", "StorageClass")}
# Worth another try: the server was busy, restarting or briefly unreachable.
TRANSIENT_STATUSES = {429, 500, 502, 503, 504}


class ApiError(Exception):
    """A failed API call; `status` is the HTTP status (0 when the server could not be reached)."""

    def __init__(self, status: int, reason: str, message: str):
        self.status = status
        self.reason = reason
        super().__init__(f"{status} {reason}: {message}")

    @property
    def transient(self) -> bool:
        return self.status == 0 or self.status in TRANSIENT_STATUSES


@dataclass(frozen=True)
class Ref:
    """Identifies one namespaced object."""

    api_version: str
    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, obj: JsonObject) -> "Ref":
        meta = obj["metadata"]
        return cls(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def collection_path(api_version: str, kind: str, namespace: str) -> str:
    plural = PLURALS.get((api_version, kind))
    if plural is None:
        known = ", ".join(f"{v} {k}" for v, k in PLURALS)
        raise ValueError(f"the operator does not manage {api_version} {kind}; known kinds: {known}")
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    if (api_version, kind) in CLUSTER_SCOPED:
        return f"{prefix}/{plural}"
    return f"{prefix}/namespaces/{namespace}/{plural}"


def object_path(ref: Ref, subresource: str | None = None) -> str:
    path = f"{collection_path(ref.api_version, ref.kind, ref.namespace)}/{ref.name}"
    return f"{path}/{subresource}" if subresource else path


def load_configuration() -> k8s_client.Configuration:
    """In-cluster credentials when running in a pod, else the current kubeconfig context."""
    configuration = k8s_client.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(client_configuration=configuration)
    return configuration


def authorization(configuration: k8s_client.Configuration) -> str | None:
    """The Authorization header value ("Bearer ..."), asked for on every call: in-cluster tokens rotate and the
    configuration's refresh hook re-reads them. The key is "BearerToken" since kubernetes 30, before that
    "authorization"."""
    for identifier in ("BearerToken", "authorization"):
        value = configuration.get_api_key_with_prefix(identifier)
        if value:
            return str(value)
    return None


class KubeApi:
    """Created once per operator; the HTTP session is opened lazily inside the operator's event loop."""

    def __init__(self, configuration: k8s_client.Configuration, timeout: float = 15.0):
        self._configuration = configuration
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        cfg = self._configuration
        if not cfg.host.startswith("https"):
            return False
        if not cfg.verify_ssl:
            return False
        context = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
        if cfg.cert_file:
            context.load_cert_chain(cfg.cert_file, cfg.key_file)
        return context

    def _headers(self) -> dict[str, str]:
        token = authorization(self._configuration)
        return {"Authorization": token} if token else {}

    async def _session_open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl())
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> JsonObject:
        session = await self._session_open()
        headers = {**self._headers(), "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        url = self._configuration.host.rstrip("/") + path
        try:
            async with session.request(method, url, data=data, headers=headers) as response:
                text = await response.text()
                if response.status >= 400:
                    raise _error(response.status, text)
                return json.loads(text) if text else {}
        except (TimeoutError, aiohttp.ClientConnectionError) as exc:
            raise ApiError(0, "Unreachable", f"{method} {url}: {exc!r}") from exc

    async def get(self, ref: Ref) -> JsonObject:
        return await self.request("GET", object_path(ref))

    async def get_or_none(self, ref: Ref) -> JsonObject | None:
        try:
            return await self.get(ref)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, api_version: str, kind: str, namespace: str) -> list[JsonObject]:
        found = await self.request("GET", collection_path(api_version, kind, namespace))
        return list(found.get("items") or [])

    async def create(self, obj: JsonObject) -> JsonObject:
        meta = obj["metadata"]
        return await self.request("POST", collection_path(obj["apiVersion"], obj["kind"], meta["namespace"]), obj)

    async def merge_patch(self, ref: Ref, patch: JsonObject, subresource: str | None = None) -> JsonObject:
        """RFC 7386: dicts merge, lists are replaced whole; the same on every server (unlike strategic merge)."""
        return await self.request("PATCH", object_path(ref, subresource), patch, "application/merge-patch+json")

    async def delete(self, ref: Ref, propagation: str = "Background") -> bool:
        """True if it was deleted, False if it was already gone. With propagation "Orphan", what it owns stays."""
        try:
            await self.request("DELETE", object_path(ref), {"propagationPolicy": propagation})
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True


def _error(status: int, text: str) -> ApiError:
    try:
        payload = json.loads(text)
    except ValueError:
        payload = {}
    if not isinstance(payload, dict):
        payload = {}
    return ApiError(status, str(payload.get("reason") or "Error"), str(payload.get("message") or text[:300]))
