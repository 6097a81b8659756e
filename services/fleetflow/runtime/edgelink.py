"""The link between an edge site and the centre, as NATS sees it: JetStream domains, the leaf-node connection
(both ends of nats.conf) and the streams that source a site's data into the centre.

A site's NATS is a leaf node of the fleet's NATS with a JetStream domain of its own. Its fleet streams capture the
same subjects as the centre's, so nothing on `ff.>` may cross the leaf connection itself (each side would store
it twice); the centre's streams *source* the site's streams over the JetStream API of the site's domain instead.
A sourced message keeps its Nats-Msg-Id and carries its origin sequence, from which the centre resumes after an
outage: every batch the site stored arrives once, in the site's order (docs/edge.md)."""

import dataclasses
import hashlib
import json
from urllib.parse import urlsplit

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, ExternalStream, StreamConfig, StreamSource, SubjectTransform

from fleetflow.api import DeviceFleet
from fleetflow.api.sites import EdgeSite
from fleetflow.runtime import natsauth, subjects

HUB_DOMAIN = "hub"
# Subjects that stay on their own side of the leaf connection: the fleets' data (captured by streams on both sides)
# and the MQTT sessions of each side's devices.
LOCAL_ONLY = ("ff.>", "$MQTT.>")
FLOW_CONTROL = "$JS.FC.>"  # where a sourcing consumer at a site asks the hub to confirm it keeps up
HUB_SCHEMES = ("nats", "tls")  # tls://: the site verifies the hub's certificate against --hub-ca


def site_domain(fleet: str, site: str) -> str:
    """The site's JetStream domain, unique on the hub: also the user its leaf connection logs in as."""
    return f"{fleet}-{site}"


def site_api(fleet: str, site: str) -> str:
    return f"$JS.{site_domain(fleet, site)}.API"


def site_api_subjects(domain: str) -> str:
    return f"$JS.{domain}.API.>"


def site_account(domain: str) -> str:
    """The hub's account for one site's leaf connection: what the site publishes stays in it, except what the
    fleets' account imports from it (hub_site_accounts)."""
    return f"site-{domain}"


def deliver_prefix(domain: str) -> str:
    """Where a site's stream delivers what the hub sources from it: a prefix of the site's own, so the fleets'
    account imports the site's deliveries and nothing else the site publishes."""
    return f"fleetflow-site.{domain}.deliver"


def site_commands_prefix(domain: str) -> str:
    """Where the centre pushes the commands of a site's devices: a service of the site's account that the fleets'
    account imports, so only that site receives them and its stream's acknowledgement comes back (docs/edge.md)."""
    return f"fleetflow-site.{domain}.commands"


def site_command_subject(domain: str, device: str) -> str:
    return f"{site_commands_prefix(domain)}.{device}"


def site_command_transform(fleet: str, domain: str) -> SubjectTransform:
    """The site's command stream stores a pushed command under the fleet's command subject of its device, where
    the site's gateway delivers it like any command of the site's own pipelines."""
    return SubjectTransform(src=f"{site_commands_prefix(domain)}.*", dest=f"ff.{fleet}.cmd.{{{{wildcard(1)}}}}")


# nats-server's name hash (getHash): base-62 digits of the first 8 bytes of a SHA-256.
_HASH_DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
STREAM_SOURCE_HEADER = "Nats-Stream-Source"


def source_index_name(stream: str, api: str) -> str:
    """How nats-server names a source from another domain in the `Nats-Stream-Source` header of what it sourced:
    `<stream>:<hash of the API prefix>`."""
    digest = hashlib.sha256(api.encode()).digest()
    return f"{stream}:{''.join(_HASH_DIGITS[byte % len(_HASH_DIGITS)] for byte in digest[:8])}"


def telemetry_origins(fleet: DeviceFleet) -> dict[str, str]:
    """The site each sourced telemetry message came from, by the source name in its `Nats-Stream-Source` header."""
    stream = subjects.telemetry_stream(fleet.name)
    return {
        source_index_name(stream, site_api(fleet.name, site.name)): site.name
        for site in fleet.spec.sites
        if site.forward.readings
    }


def origin_site(fleet: DeviceFleet, stream_source: str | None) -> str | None:
    """The site a telemetry message of the centre was sourced from (its `Nats-Stream-Source` header); None for one
    a gateway of the centre stored, or one from a source this fleet does not declare."""
    if not stream_source:
        return None
    return telemetry_origins(fleet).get(stream_source.split(" ", 1)[0])


def site_source(fleet: str, site: str) -> ExternalStream:
    domain = site_domain(fleet, site)
    return ExternalStream(api=site_api(fleet, site), deliver=deliver_prefix(domain))


def telemetry_sources(fleet: DeviceFleet) -> list[StreamSource]:
    """The centre's telemetry stream sources every site that forwards its readings."""
    stream = subjects.telemetry_stream(fleet.name)
    return [
        StreamSource(name=stream, external=site_source(fleet.name, site.name))
        for site in fleet.spec.sites
        if site.forward.readings
    ]


def record_sources(fleet: DeviceFleet, pipeline: str) -> list[StreamSource]:
    """The centre's copy of an edge pipeline's output stream sources, from each site running it, only the record
    kinds that site forwards (metered links): the raw and late readings stay at the site."""
    stream = subjects.pipeline_stream(fleet.name, pipeline)
    found = []
    for site in fleet.spec.sites:
        if pipeline in site.pipelines and site.forward.records:
            kinds = [f"ff.{fleet.name}.pl.{pipeline}.{record}.>" for record in site.forward.records]
            found.append(
                StreamSource(
                    name=stream,
                    external=site_source(fleet.name, site.name),
                    # A transform to itself is a filter; a source may carry several.
                    subject_transforms=[SubjectTransform(src=kind, dest=kind) for kind in kinds],
                )
            )
    return found


def edge_pipelines(fleet: DeviceFleet) -> set[str]:
    """Pipelines that run at a site of the fleet, not in the centre."""
    return {name for site in fleet.spec.sites for name in site.pipelines}


def forwarded_pipelines(fleet: DeviceFleet) -> set[str]:
    """Edge pipelines whose records some site forwards: the centre runs their writer."""
    return {name for site in fleet.spec.sites if site.forward.records for name in site.pipelines}


def site_telemetry(stream: StreamConfig, site: EdgeSite) -> StreamConfig:
    """The site's telemetry stream: the centre's, bounded by the site's disk budget and longest outage, and full
    either refusing new batches or dropping the oldest. Limits retention: the centre's source reads it again after
    every outage, which work-queue or interest retention would not allow."""
    storage = site.storage
    discard = DiscardPolicy.NEW if storage.when_full == "RejectNew" else DiscardPolicy.OLD
    return dataclasses.replace(
        stream, max_bytes=storage.max_bytes_value, max_age=storage.max_age_seconds, discard=discard, sources=None
    )


def site_commands(stream: StreamConfig, fleet: str, site: str) -> StreamConfig:
    """The site's command stream: the centre's, also storing what the centre pushes to the site's devices (under
    their command subjects). A pushed command keeps its id as Nats-Msg-Id, so a push repeated is a duplicate."""
    domain = site_domain(fleet, site)
    return dataclasses.replace(stream, subjects=[*(stream.subjects or []), f"{site_commands_prefix(domain)}.*"],
                               subject_transform=site_command_transform(fleet, domain))  # fmt: skip


def find_site(fleet: DeviceFleet, name: str | None) -> EdgeSite:
    """The site `name` of the fleet; without a name, its only site. ValueError names what is declared."""
    declared = [site.name for site in fleet.spec.sites]
    if not declared:
        raise ValueError(f"DeviceFleet {fleet.name!r} declares no sites: add spec.sites (docs/edge.md)")
    if name is None:
        if len(declared) > 1:
            raise ValueError(f"DeviceFleet {fleet.name!r} declares sites {', '.join(declared)}: choose one with --site")
        return fleet.spec.sites[0]
    for site in fleet.spec.sites:
        if site.name == name:
            return site
    raise ValueError(f"--site {name!r}: DeviceFleet {fleet.name!r} declares sites {', '.join(declared)}")


def check_hub_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a hub's leaf-node URL; ValueError naming the value and what is accepted."""
    accepted = "nats://HOST:PORT or tls://HOST:PORT (the hub's leaf-node listener, no user or password in it)"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"--hub {url!r}: use {accepted}") from None
    if parts.scheme not in HUB_SCHEMES or not parts.hostname or port is None or parts.username or parts.path:
        raise ValueError(f"--hub {url!r}: use {accepted}")
    return parts.scheme, parts.hostname, port


def leaf_remote_config(hub_url: str, user: str, password: str, account: str, hub_ca: str | None = None) -> str:
    """The site's nats.conf block that dials the hub; over TLS (tls://) it trusts the certificates `hub_ca` signed
    (without one, the system's). Passwords are letters and digits (natsauth.new_password), so they sit in the URL
    as they are."""
    scheme, host, port = check_hub_url(hub_url)
    denied = ", ".join(f'"{subject}"' for subject in LOCAL_ONLY)
    tls = [f'      tls {{ ca_file: "{hub_ca}" }}'] if scheme == "tls" and hub_ca else []
    return "\n".join(
        [
            "leafnodes {",
            "  remotes: [",
            f'    {{ url: "{scheme}://{user}:{password}@{host}:{port}", account: {account},',
            *tls,
            f"      deny_exports: [{denied}], deny_imports: [{denied}] }}",
            "  ]",
            "}",
            "",
        ]
    )


def hub_site_accounts(sites: dict[str, str]) -> natsauth.LinkedAccounts:
    """The hub's account per site, its leaf-node user, and what the fleets' account imports from it: the JetStream
    API of the site's domain (to create the sourcing consumers and read its command states), the site's deliveries,
    the flow-control replies of its consumers, and the site's command intake (where the centre pushes the commands
    of the site's devices: a service, so only this site receives them and its acknowledgement comes back). Nothing
    else a site publishes reaches the fleets' account: a compromised site cannot write into
    `ff.>` there. `sites` maps each site's user (its domain) to its nats.conf password value. The users live in
    accounts, not in the leafnodes block, because nats-server reloads those (SIGHUP): a revocation needs no restart."""
    accounts, imports = [], []
    for domain, password in sites.items():
        exported = [f'{{ service: "{site_api_subjects(domain)}" }}', f'{{ stream: "{deliver_prefix(domain)}.>" }}',
                    f'{{ service: "{FLOW_CONTROL}" }}',
                    f'{{ service: "{site_commands_prefix(domain)}.>" }}']  # fmt: skip
        user = f"{{ user: {domain}, password: {password}, allowed_connection_types: [LEAFNODE] }}"
        accounts.append(f"{site_account(domain)} {{ users: [ {user} ], exports: [ {', '.join(exported)} ] }}")
        source = f"account: {site_account(domain)}"
        imports += [
            f'{{ service: {{ {source}, subject: "{site_api_subjects(domain)}" }} }}',
            f'{{ stream: {{ {source}, subject: "{deliver_prefix(domain)}.>" }} }}',
            f'{{ service: {{ {source}, subject: "{FLOW_CONTROL}" }} }}',
            f'{{ service: {{ {source}, subject: "{site_commands_prefix(domain)}.>" }} }}',
        ]
    return natsauth.LinkedAccounts(tuple(accounts), tuple(imports), tuple(sites))


def hub_leafnodes_config(host: str, port: int, tls: tuple[str, str] | None = None) -> str:
    """The hub's nats.conf block: a leaf-node listener where each site logs in as its own user (its domain name,
    a user of the site's own account: hub_site_accounts). The listener does not advertise other URLs: a site dials
    the address it was given (a proxy or a load balancer in between stays in the path)."""
    return "\n".join(
        [
            "leafnodes {",
            f"  listen: {host}:{port}",
            "  no_advertise: true",
            *(natsauth.tls_block(*tls, indent="  ") if tls else []),
            "}",
            "",
        ]
    )


async def source_lags(nc: Client, streams: list[str]) -> dict[str, int]:
    """Backlog per site domain: the `lag` of every source of `streams`, found by the site's JetStream API prefix.
    Read from the raw stream info, because nats.py's model of a source drops its `external` part."""
    lags: dict[str, int] = {}
    for stream in streams:
        reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=2)
        for source in json.loads(reply.data).get("sources") or []:
            api = (source.get("external") or {}).get("api", "")
            domain = api.removeprefix("$JS.").removesuffix(".API")
            lags[domain] = lags.get(domain, 0) + int(source.get("lag") or 0)
    return lags


async def rearm_sources(js: JetStreamContext, stream: str) -> None:
    """Remove the stream's sources and add them again: each restarts at once after its last stored origin sequence."""
    config = (await js.stream_info(stream)).config
    if not config.sources:
        return
    await js.update_stream(dataclasses.replace(config, sources=[]))
    await js.update_stream(config)
