"""The Slack workspaces Penny's app serves, kept in the store so that the ``penny`` commands run beside
the bot (``keys create``, ``cost``, ``usage``, ``feedback``) default to the workspace its ledger,
budgets and ``/cost`` are under instead of ``local``, where a Slack user would never see the spend.

The Slack bot records its workspace at each start-up (:func:`record_served`, from ``auth.test``).
The record store cannot list the records of a kind, and the list is tiny, so one record holds them
all: a JSON object ``{id: {"name": …, "seen_at": epoch s, "org_wide": bool}}``, kept
:data:`SERVED_TTL_S` and refreshed by every start; a workspace no start has seen for that long (the
app moved to another one) is dropped. A start replaces the record only if it still holds what the
start read (:meth:`~proxy_core.stores.base.RecordStore.record_drop`, then
:meth:`~proxy_core.stores.base.RecordStore.record_add`), else reads it again and merges, so bots of
different workspaces starting on one store at the same instant keep each other's entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from proxy_core import Store, StoreError, get_logger

if TYPE_CHECKING:
    from bot.slack.startup import SlackInstallation

__all__ = ["SERVED_KIND", "SERVED_TTL_S", "ServedWorkspace", "record_served", "served_workspaces"]

SERVED_KIND: Final = "slack:workspaces"
SERVED_KEY: Final = "served"
SERVED_TTL_S: Final = 365 * 24 * 3600.0
_WRITE_TRIES: Final = 5  # bots starting at once on one store: each try that loses merges the winner's entry

_log = get_logger()


@dataclass(frozen=True, slots=True)
class ServedWorkspace:
    """A workspace Penny's Slack app serves: its team ID and name, when a start-up last saw it, and
    whether it is an organization (``E…``) the app is installed across, whose spend is kept under
    each of its workspaces' IDs rather than under this one."""

    id: str
    name: str
    seen_at: float
    org_wide: bool = False


def served_workspaces(store: Store) -> list[ServedWorkspace]:
    """The workspaces a Slack start-up on this store has recorded in the last :data:`SERVED_TTL_S`
    (by the store's clock), oldest first; none when Penny never ran in Slack on it."""
    now = store.now()
    raw = store.record_get(SERVED_KIND, SERVED_KEY)
    served = _parsed(raw) if raw is not None else {}
    return sorted((w for w in served.values() if now - w.seen_at < SERVED_TTL_S), key=lambda w: (w.seen_at, w.id))


def record_served(store: Store, installation: SlackInstallation) -> None:
    """Record (or refresh) the workspace ``installation`` is for, now by the store's clock. Best
    effort: a store that fails here is logged, and the bot serves Slack all the same."""
    org_wide = installation.is_enterprise_install and installation.enterprise_id is not None
    workspace_id = installation.enterprise_id if org_wide else installation.team_id
    if not workspace_id:
        return
    try:
        known: dict[str, ServedWorkspace] = {}  # every entry read so far: one dropped is written back
        for _ in range(_WRITE_TRIES):
            now = store.now()
            raw = store.record_get(SERVED_KIND, SERVED_KEY)
            for w in (_parsed(raw) if raw is not None else {}).values():
                if w.id not in known or w.seen_at > known[w.id].seen_at:
                    known[w.id] = w
            known[workspace_id] = ServedWorkspace(workspace_id, installation.team, now, org_wide)
            value = json.dumps({w.id: {"name": w.name, "seen_at": w.seen_at, "org_wide": w.org_wide}
                                for w in known.values() if now - w.seen_at < SERVED_TTL_S}, sort_keys=True)
            # Replaced only if it still holds what was read; else (another start wrote meanwhile)
            # read again and merge.
            if (raw is None or store.record_drop(SERVED_KIND, SERVED_KEY, raw)) \
                    and store.record_add(SERVED_KIND, SERVED_KEY, value, SERVED_TTL_S) is None:
                return
        _log.warning("slack.workspace_not_recorded", workspace_id=workspace_id, error="the record kept changing")
    except StoreError as exc:
        _log.warning("slack.workspace_not_recorded", workspace_id=workspace_id, error=exc)


def _parsed(raw: str) -> dict[str, ServedWorkspace]:
    """The record's workspaces; what a newer or damaged record holds that this one cannot read is skipped."""
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    served = {}
    for workspace_id, entry in data.items():
        if isinstance(entry, dict) and isinstance(entry.get("seen_at"), int | float):
            served[workspace_id] = ServedWorkspace(str(workspace_id), str(entry.get("name") or ""),
                                                   float(entry["seen_at"]), bool(entry.get("org_wide")))
    return served
