"""The KMock Kubernetes emulator, completed where kopf and kubectl need more than kmock 0.8 gives
(see ../shared/notes/testing-the-operator.md): server-managed metadata (uid, resourceVersion, generation,
creationTimestamp), watches that honour resourceVersion without a gap between snapshot and stream, namespaces
taken from the URL, JSON patch `test` failures as 409, the status and scale subresources, label and field
selectors, finalizer-aware deletion, lists with kind/apiVersion, and server-side Tables with the CRDs'
printer columns for `kubectl get`. Discovery (/api, /apis, ...) stays kmock's."""

import asyncio
import copy
import datetime
import json
import re
import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import rendering

JsonObject = dict[str, Any]
Key = tuple[str, str, str, str | None, str]  # group, version, plural, namespace, name
HISTORY = 20000
_NAMESPACES_PATH = re.compile(r"^/api/v1/namespaces/?$")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _strip_directives(value: Any) -> Any:
    """Strategic-merge directives ($patch, $setElementOrder/...) have no meaning in a plain merge."""
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _age(timestamp: Any) -> Any:
    """Date columns are shown as an age, as the real API server's table converter does."""
    try:
        then = datetime.datetime.strptime(str(timestamp), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return timestamp
    seconds = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * 2:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _jsonpath(obj: Any, path: str) -> Any:
    """The JSONPath subset printer columns use: `.a.b`, and `.a[?(@.k=="v")].b`."""
    value = obj
    for part in re.findall(r'\.([A-Za-z0-9_]+)|\[\?\(@\.([A-Za-z0-9_]+)=="([^"]*)"\)\]', path):
        field, filter_key, filter_value = part
        if field:
            value = value.get(field) if isinstance(value, dict) else None
        else:
            matches = [v for v in value or [] if isinstance(v, dict) and v.get(filter_key) == filter_value]
            value = matches[0] if matches else None
    return value


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str):
        self.status, self.reason, self.message = status, reason, message
        super().__init__(message)


@attrs.define(kw_only=True)
class ApiServerEmulator(kmock.KubernetesEmulator):
    """Objects live in `store`, keyed by (group, version, plural, namespace, name)."""

    store: dict[Key, JsonObject] = attrs.field(factory=dict)
    kinds: dict[tuple[str, str, str], tuple[str, bool]] = attrs.field(factory=dict)  # -> (kind, has status)
    scale_paths: dict[tuple[str, str, str], tuple[str, ...]] = attrs.field(factory=dict)
    printer_columns: dict[tuple[str, str, str], list[JsonObject]] = attrs.field(factory=dict)
    namespaces: set[str] = attrs.field(factory=lambda: {"default"})
    history: list[tuple[int, tuple[str, str, str], JsonObject]] = attrs.field(factory=list)
    watchers: list[tuple[tuple[str, str, str], asyncio.Queue[tuple[int, JsonObject]]]] = attrs.field(factory=list)
    revision: int = 1
    # (HTTP method, plural) -> how many of the next such requests fail with 503, as a busy server's would.
    failures: dict[tuple[str, str], int] = attrs.field(factory=dict)
    # API groups this cluster does not serve (their CRDs are not installed): every request to one is a 404.
    absent_groups: set[str] = attrs.field(factory=set)
    failed: list[tuple[str, str]] = attrs.field(factory=list)
    state_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock)
    cluster_scoped: set[tuple[str, str, str]] = attrs.field(factory=set)

    # --- registration ---------------------------------------------------------------------------------

    def register(self, group: str, version: str, plural: str, kind: str, *, status: bool = True,
                 scale: tuple[str, ...] | None = None, **info: Any) -> None:  # fmt: skip
        subresources = {"status"} if status else set()
        if scale:
            subresources.add("scale")
            self.scale_paths[(group, version, plural)] = scale
        self.kinds[(group, version, plural)] = (kind, status)
        self.resources[f"{group}/{version}/{plural}" if group else f"{version}/{plural}"] = kmock.ResourceInfo(
            kind=kind, namespaced=True, subresources=subresources,
            verbs={"get", "list", "watch", "create", "patch", "update", "delete"}, **info,
        )  # fmt: skip

    def register_crd(self, crd: JsonObject) -> None:
        spec = crd["spec"]
        names = spec["names"]
        for version in spec["versions"]:
            subresources = version.get("subresources") or {}
            scale = subresources.get("scale")
            path = tuple(scale["specReplicasPath"].strip(".").split(".")) if scale else None
            self.register(spec["group"], version["name"], names["plural"], names["kind"],
                          status="status" in subresources, scale=path, singular=names["singular"],
                          shortnames=set(names.get("shortNames", [])), categories=set(names.get("categories", [])))  # fmt: skip
            self.printer_columns[(spec["group"], version["name"], names["plural"])] = version.get(
                "additionalPrinterColumns", []
            )

    def register_builtins(self) -> None:
        self.resources.load_bundled()
        for group, version, plural, kind in [
            ("", "v1", "configmaps", "ConfigMap"), ("", "v1", "secrets", "Secret"),
            ("", "v1", "services", "Service"), ("", "v1", "events", "Event"),
            ("apps", "v1", "deployments", "Deployment"), ("apps", "v1", "statefulsets", "StatefulSet"),
            ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
            ("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler"),
            ("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
            ("networking.k8s.io", "v1", "ingresses", "Ingress"),
            # The Gateway API's standard channel, as a cluster that installed its CRDs serves it.
            ("gateway.networking.k8s.io", "v1", "gateways", "Gateway"),
            ("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute"),
            ("gateway.networking.k8s.io", "v1", "grpcroutes", "GRPCRoute"),
            ("events.k8s.io", "v1", "events", "Event"),
            ("coordination.k8s.io", "v1", "leases", "Lease"),
            ("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim"),
            ("storage.k8s.io", "v1", "storageclasses", "StorageClass"),
        ]:  # fmt: skip
            status = kind not in {"ConfigMap", "Secret", "Event", "NetworkPolicy", "Lease", "StorageClass"}
            self.kinds[(group, version, plural)] = (kind, status)
        self.cluster_scoped.add(("storage.k8s.io", "v1", "storageclasses"))
        self.scale_paths[("apps", "v1", "deployments")] = ("spec", "replicas")
        self.scale_paths[("apps", "v1", "statefulsets")] = ("spec", "replicas")

    # --- direct access for tests --------------------------------------------------------------------------

    def get(self, api_version: str, plural: str, namespace: str, name: str) -> JsonObject | None:
        group, _, version = api_version.rpartition("/")
        found = self.store.get((group, version, plural, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def items(self, api_version: str, plural: str, namespace: str | None = None) -> list[JsonObject]:
        group, _, version = api_version.rpartition("/")
        return [copy.deepcopy(o) for (g, v, p, ns, _), o in self.store.items()
                if (g, v, p) == (group, version, plural) and namespace in (None, ns)]  # fmt: skip

    async def write(self, api_version: str, plural: str, namespace: str, name: str, patch: JsonObject) -> JsonObject:
        """A merge patch as a controller would write it (status included), with watch events and a new revision."""
        group, _, version = api_version.rpartition("/")
        async with self.state_lock:
            return self._update((group, version, plural, namespace, name), lambda obj: merge_patch(obj, patch), None)

    async def remove(self, api_version: str, plural: str, namespace: str, name: str) -> None:
        group, _, version = api_version.rpartition("/")
        async with self.state_lock:
            self._delete((group, version, plural, namespace, name))

    # --- HTTP -----------------------------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock's path parser fails on the namespaces collection; kopf and kubectl both ask for it.
        if _NAMESPACES_PATH.match(raw_request.path) and raw_request.method == "GET":
            items = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "uid": ns}}
                     for ns in sorted(self.namespaces)]  # fmt: skip
            if raw_request.query.get("watch") == "true":
                return await self._stream_events(raw_request, [{"type": "ADDED", "object": i} for i in items], None)
            body = {"apiVersion": "v1", "kind": "NamespaceList", "metadata": {"resourceVersion": str(self.revision)},
                    "items": items}  # fmt: skip
            return aiohttp.web.json_response(body)
        return await super().__call__(raw_request)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        if res is not None and res.group in self.absent_groups:
            status = {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 404, "reason": "NotFound",
                      "message": "the server could not find the requested resource", "metadata": {}}  # fmt: skip
            return aiohttp.web.json_response(status, status=404)
        if res is None or not res.plural or (res.group, res.version, res.plural) not in self.kinds:
            return await super()._handle(request)
        assert res.group is not None and res.version is not None
        rkey = (res.group, res.version, res.plural)
        raw = request._raw_request
        assert raw is not None
        try:
            return await self._serve(request, rkey, raw)
        except ApiError as exc:
            status = {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": exc.status,
                      "reason": exc.reason, "message": exc.message, "metadata": {}}  # fmt: skip
            return aiohttp.web.json_response(status, status=exc.status)

    async def _serve(
        self, request: rendering.Request, rkey: tuple[str, str, str], raw: aiohttp.web.BaseRequest
    ) -> aiohttp.web.StreamResponse:
        method, name, ns, sub = raw.method, request.name, request.namespace, request.subresource
        if self.failures.get((method, rkey[2]), 0) > 0:
            self.failures[(method, rkey[2])] -= 1
            self.failed.append((method, rkey[2]))
            raise ApiError(503, "ServiceUnavailable", "the emulator was told to fail this request")
        if method == "GET" and raw.query.get("watch") in ("true", "1"):
            return await self._watch(raw, rkey, ns)
        if method == "GET" and name is None:
            return self._list(raw, rkey, ns)
        if method == "POST" and name is None:
            async with self.state_lock:
                return aiohttp.web.json_response(self._create(rkey, ns, request.data), status=201)
        if name is None or (ns is None and rkey not in self.cluster_scoped):
            raise ApiError(405, "MethodNotAllowed", f"{method} {raw.path} is not supported by the emulator")
        key = (*rkey, ns, name)
        if method == "GET":
            found = self.store.get(key)
            if found is None:
                raise ApiError(404, "NotFound", f'{rkey[2]} "{name}" not found')
            return aiohttp.web.json_response(self._scale_of(rkey, found) if sub == "scale" else found)
        if method in ("PATCH", "PUT"):
            async with self.state_lock:
                updated = self._patch(key, raw.content_type, request.data, sub, replace=method == "PUT")
            return aiohttp.web.json_response(self._scale_of(rkey, updated) if sub == "scale" else updated)
        if method == "DELETE":
            async with self.state_lock:
                return aiohttp.web.json_response(self._delete(key))
        raise ApiError(405, "MethodNotAllowed", f"{method} {raw.path} is not supported by the emulator")

    # --- state changes (callers hold state_lock) ------------------------------------------------------------

    def _emit(self, rkey: tuple[str, str, str], kind: str, obj: JsonObject) -> None:
        event = {"type": kind, "object": copy.deepcopy(obj)}
        self.history.append((self.revision, rkey, event))
        del self.history[:-HISTORY]
        for wanted, queue in self.watchers:
            if wanted == rkey:
                queue.put_nowait((self.revision, event))

    def _bump(self, obj: JsonObject) -> None:
        self.revision += 1
        obj["metadata"]["resourceVersion"] = str(self.revision)

    def _create(self, rkey: tuple[str, str, str], ns: str | None, data: Any) -> JsonObject:
        if not isinstance(data, dict):
            raise ApiError(400, "BadRequest", "the body of a create must be a JSON object")
        obj = _strip_directives(copy.deepcopy(data))
        meta = obj.setdefault("metadata", {})
        if rkey in self.cluster_scoped:
            meta.pop("namespace", None)
        else:
            meta["namespace"] = ns or meta.get("namespace") or "default"
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        key = (*rkey, meta.get("namespace"), meta.get("name"))
        if not meta.get("name"):
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        if key in self.store:
            raise ApiError(409, "AlreadyExists", f'{rkey[2]} "{meta["name"]}" already exists')
        kind, _ = self.kinds[rkey]
        obj["apiVersion"] = f"{rkey[0]}/{rkey[1]}" if rkey[0] else rkey[1]
        obj["kind"] = kind
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        if "namespace" in meta:
            self.namespaces.add(meta["namespace"])
        self._bump(obj)
        self.store[key] = obj  # type: ignore[index]
        self._emit(rkey, "ADDED", obj)
        return obj

    def _patch(self, key: Key, content_type: str, data: Any, sub: str | None, replace: bool) -> JsonObject:
        def change(current: JsonObject) -> JsonObject:
            if sub == "scale":
                replicas = (data or {}).get("spec", {}).get("replicas")
                path = self.scale_paths.get(key[:3])
                if path is None or not isinstance(replicas, int):
                    raise ApiError(422, "Invalid", f"scale of {key[2]} needs an integer spec.replicas")
                nested: Any = replicas
                for part in reversed(path):
                    nested = {part: nested}
                return merge_patch(current, nested)
            if replace:
                return {**data, "status": current.get("status")} if isinstance(data, dict) else current
            if content_type == "application/json-patch+json":
                try:
                    return jsonpatch.apply_patch(current, data)  # type: ignore[no-any-return]
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                    raise ApiError(409, "Conflict", f"the JSON patch does not apply: {exc}") from None
            if not isinstance(data, dict):
                raise ApiError(400, "BadRequest", f"a {content_type} patch must be a JSON object")
            expected = (data.get("metadata") or {}).get("resourceVersion")
            if expected and expected != current["metadata"]["resourceVersion"]:
                raise ApiError(
                    409, "Conflict", "the object has been modified; apply your changes to the latest version"
                )
            return merge_patch(current, _strip_directives(data))

        return self._update(key, change, sub or "")

    def _update(self, key: Key, change: Any, sub: str | None) -> JsonObject:
        """`sub` is the subresource written through the API ("" for the main resource), None for a controller."""
        current = self.store.get(key)
        if current is None:
            raise ApiError(404, "NotFound", f'{key[2]} "{key[4]}" not found')
        before = copy.deepcopy(current)
        after = change(copy.deepcopy(current))
        _, has_status = self.kinds[key[:3]]
        if sub == "status":  # the status subresource changes the status only
            after = {**before, "status": after.get("status")}
        elif has_status and sub in ("", "scale"):  # and the main resource everything else
            after["status"] = before.get("status")
        if after.get("status") is None:
            after.pop("status", None)
        meta = after.setdefault("metadata", {})
        for fixed in ("uid", "creationTimestamp", "namespace", "name"):
            if fixed in before["metadata"]:
                meta[fixed] = before["metadata"][fixed]
        if key[:3] == ("apps", "v1", "statefulsets") and sub == "":
            _refuse_immutable_statefulset_change(before, after)
        meta["generation"] = before["metadata"].get("generation", 1)
        if {k: v for k, v in after.items() if k not in ("metadata", "status")} != {
            k: v for k, v in before.items() if k not in ("metadata", "status")
        }:
            meta["generation"] += 1
        self._bump(after)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            del self.store[key]
            self._emit(key[:3], "DELETED", after)
            return after
        self.store[key] = after
        self._emit(key[:3], "MODIFIED", after)
        return after

    def _delete(self, key: Key) -> JsonObject:
        current = self.store.get(key)
        if current is None:
            raise ApiError(404, "NotFound", f'{key[2]} "{key[4]}" not found')
        if current["metadata"].get("finalizers"):
            if not current["metadata"].get("deletionTimestamp"):
                current["metadata"]["deletionTimestamp"] = _now()
                self._bump(current)
                self._emit(key[:3], "MODIFIED", current)
            return current
        del self.store[key]
        self._bump(current)
        self._emit(key[:3], "DELETED", current)
        return current

    # --- reads --------------------------------------------------------------------------------------------

    def _scale_of(self, rkey: tuple[str, str, str], obj: JsonObject) -> JsonObject:
        replicas = obj
        for part in self.scale_paths.get(rkey, ("spec", "replicas")):
            replicas = replicas.get(part) if isinstance(replicas, dict) else None  # type: ignore[assignment]
        return {"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {k: obj["metadata"][k] for k in ("name", "namespace", "uid", "resourceVersion")},
                "spec": {"replicas": replicas}, "status": {"replicas": replicas or 0}}  # fmt: skip

    def _matching(
        self, raw: aiohttp.web.BaseRequest, rkey: tuple[str, str, str], ns: str | None
    ) -> Iterator[JsonObject]:
        for key, obj in self.store.items():
            if key[:3] == rkey and ns in (None, key[3]) and _selected(raw, obj):
                yield obj

    def _list(
        self, raw: aiohttp.web.BaseRequest, rkey: tuple[str, str, str], ns: str | None
    ) -> aiohttp.web.StreamResponse:
        items = [copy.deepcopy(o) for o in self._matching(raw, rkey, ns)]
        if "as=Table" in raw.headers.get("Accept", ""):
            return aiohttp.web.json_response(self._table(rkey, items))
        kind, _ = self.kinds[rkey]
        api_version = f"{rkey[0]}/{rkey[1]}" if rkey[0] else rkey[1]
        return aiohttp.web.json_response({"apiVersion": api_version, "kind": f"{kind}List",
                                          "metadata": {"resourceVersion": str(self.revision)}, "items": items})  # fmt: skip

    def _table(self, rkey: tuple[str, str, str], items: list[JsonObject]) -> JsonObject:
        columns = self.printer_columns.get(rkey) or [
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
        ]
        definitions = [{"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0}]
        definitions += [{"name": c["name"], "type": c["type"], "format": "", "description": "", "priority": 0}
                        for c in columns]  # fmt: skip
        rows = [{"cells": [o["metadata"]["name"], *[self._cell(o, c) for c in columns]],
                 "object": {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                            "metadata": o["metadata"]}} for o in items]  # fmt: skip
        return {"apiVersion": "meta.k8s.io/v1", "kind": "Table", "metadata": {"resourceVersion": str(self.revision)},
                "columnDefinitions": definitions, "rows": rows}  # fmt: skip

    @staticmethod
    def _cell(obj: JsonObject, column: JsonObject) -> Any:
        value = _jsonpath(obj, column["jsonPath"])
        return _age(value) if column["type"] == "date" else value

    async def _watch(
        self, raw: aiohttp.web.BaseRequest, rkey: tuple[str, str, str], ns: str | None
    ) -> aiohttp.web.StreamResponse:
        since = raw.query.get("resourceVersion", "")
        initial = raw.query.get("sendInitialEvents") == "true" or since in ("", "0")
        queue: asyncio.Queue[tuple[int, JsonObject]] = asyncio.Queue()
        async with self.state_lock:  # the snapshot and the subscription happen at one revision: no gap
            if initial:
                events = [{"type": "ADDED", "object": copy.deepcopy(o)} for o in self._matching(raw, rkey, ns)]
            else:
                events = [copy.deepcopy(e) for rv, k, e in self.history if k == rkey and rv > int(since)]
            if raw.query.get("sendInitialEvents") == "true":
                events.append({"type": "BOOKMARK", "object": {
                    "kind": self.kinds[rkey][0], "apiVersion": f"{rkey[0]}/{rkey[1]}" if rkey[0] else rkey[1],
                    "metadata": {"resourceVersion": str(self.revision),
                                 "annotations": {"k8s.io/initial-events-end": "true"}}}})  # fmt: skip
            entry = (rkey, queue)
            self.watchers.append(entry)

        def wanted(event: JsonObject) -> bool:
            obj = event["object"]
            return event["type"] == "BOOKMARK" or (
                ns in (None, obj["metadata"].get("namespace")) and _selected(raw, obj)
            )

        try:
            return await self._stream_events(raw, [e for e in events if wanted(e)], queue, wanted)
        finally:
            self.watchers.remove(entry)

    async def _stream_events(self, raw: aiohttp.web.BaseRequest, events: list[JsonObject],
                             queue: asyncio.Queue[tuple[int, JsonObject]] | None, wanted: Any = None) -> aiohttp.web.StreamResponse:  # fmt: skip
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(raw)
        timeout = float(raw.query.get("timeoutSeconds") or 3600)
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            for event in events:
                await response.write(json.dumps(event).encode() + b"\n")
            while True:
                remaining = deadline - asyncio.get_running_loop().time()
                # aiohttp does not cancel a handler whose client left: notice it, or shutdown waits 60 s.
                if remaining <= 0 or raw.transport is None or raw.transport.is_closing():
                    break
                if queue is None:
                    await asyncio.sleep(min(remaining, 0.2))
                    continue
                try:
                    _, event = await asyncio.wait_for(queue.get(), timeout=min(remaining, 0.2))
                except TimeoutError:
                    continue
                if wanted is None or wanted(event):
                    await response.write(json.dumps(event).encode() + b"\n")
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away
        return response


# What the API server lets a StatefulSet update change; anything else in its spec is refused with a 422.
_STATEFULSET_MUTABLE = {"replicas", "ordinals", "template", "updateStrategy", "persistentVolumeClaimRetentionPolicy",
                        "minReadySeconds"}  # fmt: skip


def _refuse_immutable_statefulset_change(before: JsonObject, after: JsonObject) -> None:
    def fixed(obj: JsonObject) -> JsonObject:
        return {k: v for k, v in (obj.get("spec") or {}).items() if k not in _STATEFULSET_MUTABLE}

    if fixed(before) != fixed(after):
        raise ApiError(422, "Invalid", f'StatefulSet.apps "{before["metadata"]["name"]}" is invalid: spec: Forbidden: '
                       "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', "
                       "'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are "
                       "forbidden")  # fmt: skip


def _selected(raw: aiohttp.web.BaseRequest, obj: JsonObject) -> bool:
    """Equality-based label selectors (`a=b,c!=d`) and metadata.name/namespace field selectors."""
    meta = obj.get("metadata", {})
    labels = meta.get("labels") or {}
    for term in filter(None, raw.query.get("labelSelector", "").split(",")):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k) != v:
                return False
        elif term not in labels:
            return False
    for term in filter(None, raw.query.get("fieldSelector", "").split(",")):
        k, _, v = term.replace("==", "=").partition("=")
        field = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace")}.get(k)
        if field != v:
            return False
    return True
