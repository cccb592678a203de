"""Invoices: an org's invoices and the upcoming one, as JSON, PDF and CSV; their status and
closing periods by the admin."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Response

from api.auth import require_admin, require_scope, services
from api.errors import ApiError
from api.invoice_files import filename, to_csv, to_pdf
from api.invoicing import InvoiceBook
from api.registry import ApiKey
from api.state import Services
from schemas.api import ErrorBody
from schemas.invoices import Invoice, InvoiceList, InvoicesClosed, InvoiceStatusChange
from tally.store import audit

_BILLING = require_scope("billing:read")  # invoices are billing data
router = APIRouter(
    prefix="/api/v2",
    tags=["invoices"],
    responses={401: {"model": ErrorBody, "description": "Missing or unknown key"}},
)
admin = APIRouter(
    prefix="/api/v2/admin",
    tags=["invoices"],
    dependencies=[Depends(require_admin)],
    responses={
        401: {"model": ErrorBody, "description": "Not the admin key"},
        403: {"model": ErrorBody, "description": "Admin is disabled"},
    },
)

_ID = Path(pattern=r"^inv_[0-9a-f]{20}$", description="The invoice's id, `inv_...`.")
Responses = dict[int | str, dict[str, Any]]
_NOT_FOUND: Responses = {404: {"model": ErrorBody, "description": "No such invoice in this org"}}
_PDF: Responses = {200: {"content": {"application/pdf": {}}, "description": "The invoice as a PDF"}}
_CSV: Responses = {200: {"content": {"text/csv": {}}, "description": "The invoice's lines as CSV"}}


def book(svc: Services = Depends(services)) -> InvoiceBook:
    return InvoiceBook(svc)


@router.get("/invoices", response_model=InvoiceList)
async def invoices(key: ApiKey = Depends(_BILLING), b: InvoiceBook = Depends(book)) -> Any:
    """Every invoice of the org, newest period first."""
    return InvoiceList(invoices=await b.all(key.org_id))


@router.get("/invoices/upcoming", response_model=Invoice)
async def upcoming(key: ApiKey = Depends(_BILLING), b: InvoiceBook = Depends(book)) -> Any:
    """The period in progress, as its invoice would read if it closed now."""
    return await b.upcoming(key.org_id)


@router.get("/invoices/upcoming/pdf", response_class=Response, responses=_PDF)
async def upcoming_pdf(key: ApiKey = Depends(_BILLING), b: InvoiceBook = Depends(book)) -> Response:
    return _file(await b.upcoming(key.org_id), "pdf")


@router.get("/invoices/upcoming/csv", response_class=Response, responses=_CSV)
async def upcoming_csv(key: ApiKey = Depends(_BILLING), b: InvoiceBook = Depends(book)) -> Response:
    return _file(await b.upcoming(key.org_id), "csv")


@router.get("/invoices/{invoice_id}", response_model=Invoice, responses=_NOT_FOUND)
async def invoice(
    invoice_id: str = _ID, key: ApiKey = Depends(_BILLING), b: InvoiceBook = Depends(book)
) -> Any:
    return await _one(b, key.org_id, invoice_id)


@router.get("/invoices/{invoice_id}/pdf", response_class=Response, responses={**_PDF, **_NOT_FOUND})
async def invoice_pdf(
    invoice_id: str = _ID, key: ApiKey = Depends(_BILLING), b: InvoiceBook = Depends(book)
) -> Response:
    return _file(await _one(b, key.org_id, invoice_id), "pdf")


@router.get("/invoices/{invoice_id}/csv", response_class=Response, responses={**_CSV, **_NOT_FOUND})
async def invoice_csv(
    invoice_id: str = _ID, key: ApiKey = Depends(_BILLING), b: InvoiceBook = Depends(book)
) -> Response:
    return _file(await _one(b, key.org_id, invoice_id), "csv")


@admin.get("/orgs/{org_id}/invoices", response_model=InvoiceList, responses=_NOT_FOUND)
async def org_invoices(
    org_id: str = Path(min_length=1, max_length=128),
    svc: Services = Depends(services),
    b: InvoiceBook = Depends(book),
) -> Any:
    """An org's invoices, newest period first: what an operator hands to a payment provider."""
    if org_id not in svc.registry.orgs:
        raise ApiError(404, "not_found", f"org {org_id!r} does not exist")
    return InvoiceList(invoices=await b.all(org_id))


@admin.put(
    "/orgs/{org_id}/invoices/{invoice_id}/status",
    response_model=Invoice,
    responses={**_NOT_FOUND, 422: {"model": ErrorBody}},
)
async def set_status(
    body: InvoiceStatusChange,
    org_id: str = Path(min_length=1, max_length=128),
    invoice_id: str = _ID,
    svc: Services = Depends(services),
    b: InvoiceBook = Depends(book),
    actor: str = Depends(require_admin),
) -> Any:
    """Mark an invoice open, paid, past_due or void (what it says never changes)."""
    if org_id not in svc.registry.orgs:
        raise ApiError(404, "not_found", f"org {org_id!r} does not exist")
    before = await _one(b, org_id, invoice_id)
    if before.status != body.status:
        await b.set_status(org_id, invoice_id, body.status)
        await audit.record(
            svc.store,
            actor=actor,
            action="invoice.status_changed",
            org_id=org_id,
            before={"invoice_id": invoice_id, "status": before.status},
            after={"invoice_id": invoice_id, "status": body.status},
        )
    return before.model_copy(update={"status": body.status})


@admin.post("/invoices/close", response_model=InvoicesClosed, responses=_NOT_FOUND)
async def close(
    org_id: str | None = Query(
        None, min_length=1, max_length=128, description="Only this org (default: every org)."
    ),
    svc: Services = Depends(services),
    b: InvoiceBook = Depends(book),
) -> Any:
    """Invoice every billing period that has ended and has no invoice yet (what runs
    by itself in the background, now)."""
    if org_id is not None and org_id not in svc.registry.orgs:
        raise ApiError(404, "not_found", f"org {org_id!r} does not exist")
    made = await b.close(org_ids=[org_id] if org_id else ())
    closed = []
    for org, ids in sorted(made.items()):
        closed += [inv for inv in reversed(await b.all(org)) if inv.id in ids]
    return InvoicesClosed(closed=closed)


async def _one(b: InvoiceBook, org_id: str, invoice_id: str) -> Invoice:
    found = await b.get(org_id, invoice_id)
    if found is None:
        raise ApiError(404, "not_found", f"no invoice {invoice_id!r} in this org")
    return found


_RENDER: dict[str, tuple[Callable[[Invoice], bytes | str], str]] = {
    "pdf": (to_pdf, "application/pdf"),
    "csv": (to_csv, "text/csv; charset=utf-8"),
}


def _file(inv: Invoice, ext: str) -> Response:
    render, media = _RENDER[ext]
    disposition = f'attachment; filename="{filename(inv, ext)}"'
    return Response(render(inv), media_type=media, headers={"Content-Disposition": disposition})
