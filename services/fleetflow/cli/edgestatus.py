"""The edge sites in `fleetflow status` on a hub: what its `fleetflow up` serves on /sites (local/sitemetrics.py)."""

from typing import Any

import aiohttp


async def print_sites(url: str) -> None:
    try:
        async with aiohttp.ClientSession() as session, session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as got:
            sites = (await got.json())["sites"]
    except (aiohttp.ClientError, TimeoutError, KeyError) as exc:
        print(f"edge sites: unavailable from {url} ({type(exc).__name__})")
        return
    connected = sum(1 for site in sites if site["link_up"])
    print(f"edge sites: {connected}/{len(sites)} connected")
    for site in sites:
        print(f"  {site_line(site)}")


def site_line(site: dict[str, Any]) -> str:
    name = f"{site['fleet']}/{site['site']}"
    link = "up" if site["link_up"] else "DOWN"
    backlog = f"backlog {site['backlog_messages']:,} msgs, behind {site['backlog_age_seconds']:.0f}s"
    carried = f"received {site['received_bytes']:,} bytes, sent {site['sent_bytes']:,}"
    return f"{name:<24} link {link:<4}  {backlog}  {carried}"
