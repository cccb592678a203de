"""Credits: an org's balance and history, and top-ups by the admin."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Response

from api.auth import require_admin, require_scope, services
from api.errors import ApiError
from api.ledger import CreditLedger
from api.registry import ApiKey
from api.state import Services
from schemas.api import ErrorBody
from schemas.usage import CreditEntry, Credits, TopUpCreate, TopUpOut
from tally.domain.credits import Account
from tally.store import audit

log = logging.getLogger("tally.credits")

router = APIRouter(
    prefix="/api/v2",
    tags=["credits"],
    responses={401: {"model": ErrorBody, "description": "Missing or unknown key"}},
)


def ledger(svc: Services = Depends(services)) -> CreditLedger:
    return CreditLedger(svc.store, svc.topup_lock)


@router.get("/credits", response_model=Credits)
async def credits(
    key: ApiKey = Depends(require_scope("billing:read")), book: CreditLedger = Depends(ledger)
) -> Credits:
    """The org's credit balance and its history: top-ups in, each day's live usage out."""
    return _credits(key.org_id, await book.account(key.org_id))


@router.post(
    "/admin/orgs/{org_id}/credits",
    status_code=201,
    response_model=TopUpOut,
    dependencies=[Depends(require_admin)],
    responses={
        200: {"model": TopUpOut, "description": "This key was applied before: nothing changed"},
        403: {"model": ErrorBody},
        404: {"model": ErrorBody},
        409: {"model": ErrorBody, "description": "The key was used for a different top-up"},
    },
)
async def top_up(
    org_id: str,
    body: TopUpCreate,
    response: Response,
    svc: Services = Depends(services),
    book: CreditLedger = Depends(ledger),
    actor: str = Depends(require_admin),
) -> TopUpOut:
    """Add credits to an org. Send the same `idempotency_key` when retrying: the top-up is
    applied once, and a retry answers 200 with `replayed: true`."""
    if org_id not in svc.registry.orgs:
        raise ApiError(404, "not_found", f"org {org_id!r} does not exist")
    topup, outcome = await book.top_up(org_id, body.idempotency_key, body.amount_micros, body.note)
    if outcome == "conflict":
        raise ApiError(
            409,
            "idempotency_key_reused",
            f"idempotency_key {body.idempotency_key!r} was used for a top-up of "
            f"{topup.amount_micros} micro-units at {topup.at.isoformat()}; use a new key",
        )
    if outcome == "replayed":
        response.status_code = 200
    log.info(
        "top-up %s: %d micros under key %s",
        outcome,
        topup.amount_micros,
        topup.idempotency_key,
        extra={"org": org_id},
    )
    account = await book.account(org_id)
    if outcome != "replayed":
        await audit.record(
            svc.store,
            actor=actor,
            action="credit.added",
            org_id=org_id,
            before={"balance_micros": account.balance_micros - topup.amount_micros},
            after={
                "balance_micros": account.balance_micros,
                "amount_micros": topup.amount_micros,
                "idempotency_key": topup.idempotency_key,
                "note": topup.note,
            },
        )
    return TopUpOut(
        org_id=org_id,
        idempotency_key=topup.idempotency_key,
        amount_micros=topup.amount_micros,
        note=topup.note,
        created_at=topup.at,
        replayed=outcome == "replayed",
        balance_micros=account.balance_micros,
    )


def _credits(org_id: str, account: Account) -> Credits:
    return Credits(
        org_id=org_id,
        balance_micros=account.balance_micros,
        topped_up_micros=account.topped_up_micros,
        spent_micros=account.spent_micros,
        started_at=account.started_at,
        history=[
            CreditEntry(
                at=e.at,
                kind=e.kind,
                amount_micros=e.amount_micros,
                balance_micros=e.balance_micros,
                idempotency_key=e.idempotency_key,
                note=e.note,
                day=e.day,
            )
            for e in account.entries
        ],
    )
