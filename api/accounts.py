"""An org as the quota API sees it at one moment: its subscription, plan in force and
billing window, from the registry's orgs and their recorded subscription changes."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime

from api.registry import Org, Registry
from schemas.plans import Catalogue, Plan
from tally.domain.subscriptions import Subscription
from tally.domain.windows import Window

log = logging.getLogger("tally.subscriptions")


@dataclass(frozen=True, slots=True)
class Account:
    """An org as the quota API sees it at one moment."""

    org: Org
    subscription: Subscription
    plan: Plan  # the plan in force, Enterprise overrides applied
    window: Window
    default_model: str | None
    overridden: tuple[str, ...]
    # All of the above holds until then, unless a change is recorded: the window ends, a
    # scheduled change takes effect, or a change recorded for later comes due.
    until: datetime

    @property
    def anchor(self) -> date:
        return self.subscription.anchor


_missing_warned: set[str] = set()


def plan_in_force(catalogue: Catalogue, name: str) -> Plan:
    """The catalogue's plan; an org on a plan removed from the catalogue gets the default."""
    plan = catalogue.get(name)
    if plan is not None:
        return plan
    if name not in _missing_warned:
        _missing_warned.add(name)
        log.warning(
            "plan %r is not in the catalogue: its orgs get %r", name, catalogue.default_plan
        )
    return catalogue.default


def account(registry: Registry, catalogue: Catalogue, org_id: str, now: datetime) -> Account:
    org = registry.orgs[org_id]
    accounts = registry.accounts
    sub, later = accounts.subscription_until(org, now)
    window = sub.window(now)
    base = plan_in_force(catalogue, sub.plan)
    overrides = accounts.overrides.get(org_id) if base.custom else None
    return Account(
        org=org,
        subscription=sub,
        plan=accounts.effective(org_id, base, overrides),
        window=window,
        default_model=accounts.default_models.get(org_id),
        overridden=tuple(overrides.updates()) if overrides else (),
        until=window.end if later is None or later > window.end else later,
    )
